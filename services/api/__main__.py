import logging
import sys
from typing import Any

import uvicorn

from services.api.app import create_app
from services.api.auth import TokenBook
from services.common.errors import ConfigError
from services.common.runtime import require_infra, setup_logging
from services.common.settings import ApiSettings, load_or_exit

settings = load_or_exit(ApiSettings)
try:
    require_infra(settings)
    tokens = TokenBook.parse(settings.api_tokens)
except ConfigError as exc:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
setup_logging(settings.log_level, "services.api", settings.log_format)
if not tokens.entries:
    logging.getLogger("services.api").warning("EVACUATE_API_TOKENS is empty: every request but /healthz and"
                                              " /metrics will be refused with 401")
app = create_app(settings, tokens)
server = uvicorn.Server(uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_config=None,
                                       access_log=False, timeout_graceful_shutdown=5))
stop = server.handle_exit


def handle_exit(sig: int, frame: Any) -> None:
    app.state.events.close_soon()  # open event streams never end by themselves: end them, then stop
    stop(sig, frame)


server.handle_exit = handle_exit  # type: ignore[method-assign]
server.run()
