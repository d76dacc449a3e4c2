from services.common.runtime import run, setup_logging
from services.common.settings import DetectorSettings, load_or_exit
from services.detector.service import amain

settings = load_or_exit(DetectorSettings)
setup_logging(settings.log_level, "services.detector", settings.log_format)
run(lambda: amain(settings), settings, "detector")
