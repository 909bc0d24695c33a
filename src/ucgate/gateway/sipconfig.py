"""``[sip]``'s settings; the model lives in :mod:`ucgate.config.sip` (the configuration does not
import gateway/). Re-exported here for the SIP relay."""

from ..config.sip import SipConfig, parse_sip

__all__ = ["SipConfig", "parse_sip"]
