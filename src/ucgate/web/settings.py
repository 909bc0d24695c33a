"""``[web]``'s settings; the model lives in :mod:`ucgate.config.web` (the configuration does not
import web/). Re-exported here for the web modules that read them."""

from ..config.web import ROLES, STAFF_ROLES, Role, WebConfig, parse_web

__all__ = ["ROLES", "STAFF_ROLES", "Role", "WebConfig", "parse_web"]
