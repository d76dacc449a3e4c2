from services.common.runtime import run, setup_logging
from services.common.settings import PlannerSettings, load_or_exit
from services.planner.service import amain

settings = load_or_exit(PlannerSettings)
setup_logging(settings.log_level, "services.planner", settings.log_format)
run(lambda: amain(settings), settings, "planner")
