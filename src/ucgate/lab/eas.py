"""The lab's simulated Exchange ActiveSync endpoint (``/Microsoft-Server-ActiveSync``).

Answers as Exchange 2016/2019 does, in shape: OPTIONS lists versions and commands; Provision is
two-phase (policy with a temporary key, then the final key on acknowledgement, MS-ASPROV
3.2.5.1); FolderSync returns the default folders; Sync returns empty collections; Settings, Ping
answer minimally. A command without the device's current policy key gets HTTP 449 for protocol
12.1 and earlier, and status 142 (not provisioned) or 144 (invalid policy key) in the command's
own WBXML for 14.0 and later ([MS-ASCMD] 2.2.2, [MS-OXPROTO] 2.5.14.5). Authentication is the
gateway's: the user comes from the trusted identity header, otherwise 401 Basic.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from ..protocols.activesync import EasRequestError, parse_eas_request
from ..protocols.wbxml import E, Element, WbxmlError, decode, encode

WBXML = "application/vnd.ms-sync.wbxml"
# Exchange 2019 reports 15.20 (2016: 15.1) — see MS-ASHTTP 2.2.2.1.2.
SERVER_VERSION = "15.20"
PROTOCOL_VERSIONS = "2.0,2.1,2.5,12.0,12.1,14.0,14.1,16.0,16.1"
# As an Exchange 2016 server sends it (MS-ASHTTP 2.2.2.1.2 example list, with Find).
PROTOCOL_COMMANDS = (
    "Sync,SendMail,SmartForward,SmartReply,GetAttachment,GetHierarchy,CreateCollection,"
    "DeleteCollection,MoveCollection,FolderSync,FolderCreate,FolderDelete,FolderUpdate,"
    "MoveItems,GetItemEstimate,MeetingResponse,Search,Settings,Ping,ItemOperations,Provision,"
    "ResolveRecipients,ValidateCert,Find"
)
POLICY_TYPE = "MS-EAS-Provisioning-WBXML"
MAX_BODY_BYTES = 4 * 1024 * 1024
STATUS_DEVICE_NOT_PROVISIONED = 142
STATUS_INVALID_POLICY_KEY = 144

# (ServerId, ParentId, DisplayName, Type) — MS-ASCMD 2.2.3.186.3 folder types.
DEFAULT_FOLDERS = (
    ("1", "0", "Inbox", 2),
    ("2", "0", "Drafts", 3),
    ("3", "0", "Deleted Items", 4),
    ("4", "0", "Sent Items", 5),
    ("5", "0", "Outbox", 6),
    ("6", "0", "Tasks", 7),
    ("7", "0", "Calendar", 8),
    ("8", "0", "Contacts", 9),
    ("9", "0", "Notes", 10),
    ("10", "0", "Journal", 11),
)

# A typical "Default" mobile device mailbox policy, in EASProvisionDoc order (MS-ASPROV 2.2.2.28).
DEFAULT_POLICY = (
    ("DevicePasswordEnabled", "1"),
    ("AlphanumericDevicePasswordRequired", "0"),
    ("PasswordRecoveryEnabled", "0"),
    ("RequireDeviceEncryption", "0"),
    ("AttachmentsEnabled", "1"),
    ("MinDevicePasswordLength", "4"),
    ("MaxInactivityTimeDeviceLock", "900"),
    ("MaxDevicePasswordFailedAttempts", "8"),
    ("AllowSimpleDevicePassword", "1"),
    ("DevicePasswordExpiration", "0"),
    ("DevicePasswordHistory", "0"),
    ("AllowStorageCard", "1"),
    ("AllowCamera", "1"),
    ("RequireStorageCardEncryption", "0"),
    ("AllowUnsignedApplications", "1"),
    ("AllowUnsignedInstallationPackages", "1"),
    ("MinDevicePasswordComplexCharacters", "1"),
    ("AllowWiFi", "1"),
    ("AllowTextMessaging", "1"),
    ("AllowPOPIMAPEmail", "1"),
    ("AllowBluetooth", "2"),
    ("AllowIrDA", "1"),
    ("RequireManualSyncWhenRoaming", "0"),
    ("AllowDesktopSync", "1"),
    ("MaxCalendarAgeFilter", "0"),
    ("AllowHTMLEmail", "1"),
    ("MaxEmailAgeFilter", "0"),
    ("MaxEmailBodyTruncationSize", "-1"),
    ("MaxEmailHTMLBodyTruncationSize", "-1"),
    ("RequireSignedSMIMEMessages", "0"),
    ("RequireEncryptedSMIMEMessages", "0"),
    ("RequireSignedSMIMEAlgorithm", "0"),
    ("RequireEncryptionSMIMEAlgorithm", "0"),
    ("AllowSMIMEEncryptionAlgorithmNegotiation", "2"),
    ("AllowSMIMESoftCerts", "1"),
    ("AllowBrowser", "1"),
    ("AllowConsumerEmail", "1"),
    ("AllowRemoteDesktop", "1"),
    ("AllowInternetSharing", "1"),
)


def _new_policy_key() -> int:
    return 1 + secrets.randbelow(2**32 - 1)  # a uint32, never 0 (0 means "none")


@dataclass
class Device:
    """One user's device as Exchange keeps it (the mobile device object)."""

    temporary_key: int | None = None
    policy_key: int | None = None
    folder_sync_key: int = 0
    sync_keys: dict[str, int] = field(default_factory=dict)


class ActiveSyncSimulator:
    """State and handlers of the simulated ActiveSync endpoint."""

    def __init__(self, identity_header: str, realm: str) -> None:
        self.identity_header = identity_header
        self.realm = realm
        self.devices: dict[tuple[str, str], Device] = {}

    # --- entry point ----------------------------------------------------------------------

    async def handle(self, request: Request, user: str | None) -> Response:
        if user is None:
            host = request.headers.get("x-forwarded-host") or request.url.hostname or self.realm
            return self._plain(401, {"WWW-Authenticate": f'Basic realm="{host.split(":")[0]}"'})
        if request.method == "OPTIONS":
            return self._plain(
                200,
                {
                    "Allow": "OPTIONS,POST",
                    "Public": "OPTIONS,POST",
                    "MS-Server-ActiveSync": SERVER_VERSION,
                    "MS-ASProtocolVersions": PROTOCOL_VERSIONS,
                    "MS-ASProtocolCommands": PROTOCOL_COMMANDS,
                },
            )
        if request.method == "GET":
            # Exchange answers a browser's GET with 501 Not Implemented (MS-ASHTTP 2.2.2.1.1).
            return self._plain(501)
        if request.method != "POST":
            return self._plain(405, {"Allow": "OPTIONS,POST"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            eas = parse_eas_request(target, request.headers, allow_binary_device_id=True)
        except EasRequestError as e:
            return self._plain(400, {"X-MS-Diagnostics": e.reason})
        body = await read_body(request, MAX_BODY_BYTES)
        if body is None:
            return self._plain(413)
        doc: Element | None = None
        if body and eas.command not in ("SendMail", "SmartForward", "SmartReply"):
            try:
                doc = decode(body, max_bytes=MAX_BODY_BYTES)
            except WbxmlError as e:
                return self._plain(400, {"X-MS-Diagnostics": f"wbxml:{e.reason}"})
        device = self.devices.setdefault((user.lower(), eas.device_id), Device())
        if eas.command == "Provision":
            return self._wbxml(self._provision(device, doc))
        if device.policy_key is None or eas.policy_key != device.policy_key:
            status = (
                STATUS_DEVICE_NOT_PROVISIONED
                if device.policy_key is None or not eas.policy_key
                else STATUS_INVALID_POLICY_KEY
            )
            return self._needs_provisioning(eas.command, eas.protocol_version, status)
        if eas.command == "FolderSync":
            return self._wbxml(self._folder_sync(device, doc))
        if eas.command == "Sync":
            if doc is None:
                return self._plain(200)  # empty Sync: "repeat the last request", nothing new
            return self._wbxml(self._sync(device, doc))
        if eas.command == "Settings":
            return self._wbxml(self._settings(user, doc))
        if eas.command == "Ping":
            # Status 1: the heartbeat expired with no changes — answered at once here.
            return self._wbxml(E("Ping:Ping", E("Status", "1")))
        return self._plain(200)

    # --- responses ------------------------------------------------------------------------

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {
            "Cache-Control": "private",
            "MS-Server-ActiveSync": SERVER_VERSION,
            "X-FEServer": "EXCH01",
            "X-BEServer": "EXCH01",
            "request-id": secrets.token_hex(16),
        }
        h.update(extra or {})
        return h

    def _plain(self, status: int, headers: dict[str, str] | None = None) -> Response:
        return Response(b"", status_code=status, headers=self._headers(headers))

    def _wbxml(self, doc: Element) -> Response:
        return Response(encode(doc), status_code=200, media_type=WBXML, headers=self._headers())

    def _needs_provisioning(self, command: str, version: str | None, status: int) -> Response:
        """HTTP 449 for protocol 12.1 and earlier; from 14.0, status 142/144 in the command's
        own top-level element (MS-ASCMD 2.2.2). Commands whose namespace we do not encode get
        449 whatever the version."""
        modern = version is not None and float(version) >= 14.0
        top = {
            "FolderSync": "FolderHierarchy:FolderSync",
            "Sync": "AirSync:Sync",
            "Ping": "Ping:Ping",
            "Settings": "Settings:Settings",
        }.get(command)
        if not modern or top is None:
            return self._plain(449)
        return self._wbxml(E(top, E("Status", status)))

    # --- commands -------------------------------------------------------------------------

    def _provision(self, device: Device, doc: Element | None) -> Element:
        if doc is None or doc.tag != "Provision:Provision":
            return E("Provision:Provision", E("Status", "2"))
        reply = E("Provision:Provision")
        if doc.find("Settings:DeviceInformation") is not None:
            reply.children.append(E("Settings:DeviceInformation", E("Status", "1")))
        wipe = doc.find("RemoteWipe")
        if wipe is not None:  # acknowledgement of a wipe we never asked for: just accept it
            reply.children += [E("Status", "1"), E("RemoteWipe")]
            return reply
        policies = doc.find("Policies")
        policy = policies.find("Policy") if policies is not None else None
        if policy is None:
            reply.children.append(E("Status", "2"))
            return reply
        policy_type = policy.text("PolicyType")
        reply.children.append(E("Status", "1"))
        if policy_type != POLICY_TYPE:
            out = E("Policy", E("PolicyType", policy_type or ""), E("Status", "3"))
        elif policy.find("PolicyKey") is None:
            # Initial request: the policy and a temporary key (MS-ASPROV 3.2.5.1.1).
            device.temporary_key = _new_policy_key()
            out = E(
                "Policy",
                E("PolicyType", POLICY_TYPE),
                E("Status", "1"),
                E("PolicyKey", device.temporary_key),
                E("Data", E("EASProvisionDoc", *(E(k, v) for k, v in DEFAULT_POLICY))),
            )
        else:
            # Acknowledgement: the final key if it acknowledges our temporary key (3.2.5.1.2).
            acked = policy.text("PolicyKey")
            if device.temporary_key is None or acked != str(device.temporary_key):
                out = E("Policy", E("PolicyType", POLICY_TYPE), E("Status", "5"))
            else:
                device.policy_key = _new_policy_key()
                device.temporary_key = None
                out = E(
                    "Policy",
                    E("PolicyType", POLICY_TYPE),
                    E("Status", "1"),
                    E("PolicyKey", device.policy_key),
                )
        reply.children.append(E("Policies", out))
        return reply

    def _folder_sync(self, device: Device, doc: Element | None) -> Element:
        key = doc.text("SyncKey") if doc is not None and doc.tag.endswith(":FolderSync") else None
        if key is None:
            return E("FolderHierarchy:FolderSync", E("Status", "12"))  # malformed request
        if key == "0":
            device.folder_sync_key = 1
            adds = [
                E("Add", E("ServerId", sid), E("ParentId", pid), E("DisplayName", name), E("Type", ftype))
                for sid, pid, name, ftype in DEFAULT_FOLDERS
            ]
            return E(
                "FolderHierarchy:FolderSync",
                E("Status", "1"),
                E("SyncKey", "1"),
                E("Changes", E("Count", len(adds)), *adds),
            )
        if key != str(device.folder_sync_key):
            return E("FolderHierarchy:FolderSync", E("Status", "9"))  # invalid sync key
        return E(
            "FolderHierarchy:FolderSync",
            E("Status", "1"),
            E("SyncKey", key),
            E("Changes", E("Count", "0")),
        )

    def _sync(self, device: Device, doc: Element) -> Element:
        collections = doc.find("Collections")
        if doc.tag != "AirSync:Sync" or collections is None:
            return E("AirSync:Sync", E("Status", "4"))  # protocol error
        out = []
        for c in collections.findall("Collection"):
            cid = c.text("CollectionId") or ""
            key = c.text("SyncKey") or ""
            known = {sid for sid, *_ in DEFAULT_FOLDERS}
            if cid not in known:
                out.append(
                    E("Collection", E("SyncKey", key), E("CollectionId", cid), E("Status", "8"))
                )  # object not found
                continue
            current = device.sync_keys.get(cid, 0)
            if key != "0" and key != str(current):
                out.append(
                    E("Collection", E("SyncKey", "0"), E("CollectionId", cid), E("Status", "3"))
                )  # invalid synchronization key
                continue
            device.sync_keys[cid] = current + 1
            out.append(E("Collection", E("SyncKey", current + 1), E("CollectionId", cid), E("Status", "1")))
        return E("AirSync:Sync", E("Collections", *out))

    def _settings(self, user: str, doc: Element | None) -> Element:
        reply = E("Settings:Settings", E("Status", "1"))
        if doc is None:
            return reply
        if doc.find("DeviceInformation") is not None:
            reply.children.append(E("DeviceInformation", E("Status", "1")))
        if doc.find("UserInformation") is not None:
            address = user if "@" in user else f"{user}@{self.realm}"
            reply.children.append(
                E("UserInformation", E("Status", "1"), E("Get", E("EmailAddresses", E("SmtpAddress", address))))
            )
        return reply


async def read_body(request: Request, limit: int) -> bytes | None:
    """The whole request body, or None if it is longer than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
