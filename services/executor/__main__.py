from services.common.runtime import run, setup_logging
from services.common.settings import ExecutorSettings, load_or_exit
from services.executor.service import amain

settings = load_or_exit(ExecutorSettings)
setup_logging(settings.log_level, "services.executor", settings.log_format, settings.host)
run(lambda: amain(settings), settings, "executor")
