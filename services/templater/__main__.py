from services.common.runtime import run, setup_logging
from services.common.settings import TemplaterSettings, load_or_exit
from services.templater.service import amain

settings = load_or_exit(TemplaterSettings)
setup_logging(settings.log_level, "services.templater", settings.log_format)
run(lambda: amain(settings), settings, "templater")
