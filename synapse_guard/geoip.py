"""The GeoIP country lookup behind `network.allow_countries`, reloaded when the file is replaced.

- **What is accepted.** A MaxMind DB file whose `database_type` names a Country or City
  database (`GeoLite2-Country`, `GeoIP2-City`, `DBIP-Country-Lite`...). Any other type (ASN,
  ISP, Anonymous-IP...) is refused at load: its records carry no country, so every lookup
  would silently miss.
- **Which country.** `country.iso_code`: where MaxMind locates the address. There is no fall
  back to `registered_country` (where the block's owner is registered): for the records that
  lack a located country (anycast, satellite and some mobile ranges, continent-only records)
  that would let an address through an allow-list on the strength of paperwork. They are
  "country unknown", which refuses (DESIGN.md, network decision step 6); an operator who needs
  such a range lets it in with `network.allow_cidrs`.
- **Failure.** At start-up a missing, unreadable, corrupt or wrong-type file refuses to start
  (`load_geoip_database` raises `GuardConfigError`). Later, if the file at the configured path
  cannot be read or is replaced by one that does not load, lookups raise `GeoIPUnavailable`
  (the decision refuses the address), a warning is logged once per distinct problem, and
  loading is retried every check interval until it succeeds.
- **Hot reload.** geoipupdate writes a new file and renames it over the old one. At most once
  per `check_interval_s` a lookup `stat`s the path and re-opens it when the device, inode,
  size, mtime or ctime changed (ctime also catches a `chmod` that makes it unreadable).
  The file is memory-mapped: rename-over is safe, overwriting it in place is not. A replaced
  reader is not closed explicitly, so a lookup still running on it (another thread) finishes;
  reference counting frees it right after.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import attrs
import maxminddb
from maxminddb import Reader

from synapse_guard.config import GuardConfigError, NetworkPolicy
from synapse_guard.network import IPAddress
from synapse_guard.record import metrics

logger = logging.getLogger("synapse_guard")

DEFAULT_CHECK_INTERVAL_S = 5.0
ACCEPTED_DATABASE_TYPES = ("Country", "City")
ACCEPTED = (
    "a readable MaxMind DB (.mmdb) Country or City database, "
    "e.g. GeoLite2-Country.mmdb or GeoIP2-City.mmdb"
)

# The C extension (libmaxminddb) when the wheel ships it, the pure-Python reader otherwise;
# both memory-map the file.
try:
    from maxminddb import extension as _extension

    _MODE = maxminddb.MODE_MMAP_EXT if hasattr(_extension, "Reader") else maxminddb.MODE_MMAP
except ImportError:  # pragma: no cover - a platform without the wheel's C extension
    _MODE = maxminddb.MODE_MMAP
# Looked up once at load so a database whose search tree or data section is damaged is
# refused at start-up rather than discovered by the first login.
_PROBES = ("1.1.1.1", "8.8.8.8", "81.2.69.160", "2001:db8::1", "2a02:2e0::1")

_Signature = tuple[int, int, int, int, int]


class GeoIPError(Exception):
    """The database cannot be used: missing, unreadable, corrupt or of the wrong type."""


class GeoIPUnavailable(GeoIPError):
    """Raised by a lookup while the database cannot be read; the address must be refused."""


@attrs.frozen(slots=True)
class _Loaded:
    reader: Reader
    signature: _Signature
    database_type: str
    build_epoch: int
    ip_version: int


def _signature(path: str) -> _Signature:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _load(path: str) -> _Loaded:
    """Open and validate the file at `path`, or raise GeoIPError saying why."""
    try:
        # stat before opening: if the file is replaced in between, the next check sees a
        # newer signature and loads again, rather than keeping a stale database forever.
        signature = _signature(path)
        reader = maxminddb.open_database(path, _MODE)
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: InvalidDatabaseError
        raise GeoIPError(f"cannot open {path!r}: {e}") from e
    try:
        meta = reader.metadata()
        database_type = str(meta.database_type)
        if not any(kind in database_type for kind in ACCEPTED_DATABASE_TYPES):
            raise GeoIPError(f"{path!r} is a {database_type!r} database, which has no country data")
        for probe in _PROBES:
            if meta.ip_version == 4 and ":" in probe:
                continue
            reader.get(probe)
        return _Loaded(reader, signature, database_type, int(meta.build_epoch), meta.ip_version)
    except GeoIPError:
        reader.close()
        raise
    except Exception as e:  # any decoding error means a damaged file
        reader.close()
        raise GeoIPError(f"cannot read {path!r}, it looks corrupt: {e}") from e


def _iso_code(record: object) -> str | None:
    if not isinstance(record, dict):
        return None
    country = record.get("country")
    if not isinstance(country, dict):
        return None
    code = country.get("iso_code")
    return code if isinstance(code, str) else None


class GeoIPDatabase:
    """A Country or City database at a path, re-opened when the file there is replaced.

    Raises GeoIPError when the file cannot be loaded now. `clock` (seconds, monotonic) is
    injectable so that tests can step over the check interval.
    """

    def __init__(
        self,
        path: str,
        *,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        metrics_enabled: bool = True,
    ) -> None:
        self._path = path
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._metrics_enabled = metrics_enabled
        self._lock = threading.Lock()
        self._last_error: str | None = None
        self._lookup_error_logged = False
        self._closed = False
        self._generation = 0  # bumped whenever what lookups answer may change
        self._loaded: _Loaded | None = _load(path)
        self._next_check = clock() + check_interval_s
        self._set_gauge(self._loaded.build_epoch)

    @property
    def path(self) -> str:
        return self._path

    @property
    def available(self) -> bool:
        return self._loaded is not None

    @property
    def database_type(self) -> str | None:
        loaded = self._loaded
        return loaded.database_type if loaded is not None else None

    @property
    def build_epoch(self) -> int | None:
        """When the loaded database was built (Unix seconds); None while none is usable."""
        loaded = self._loaded
        return loaded.build_epoch if loaded is not None else None

    def poll(self) -> int:
        """Check for a replaced file when due, as a lookup does; returns the generation.

        The generation changes whenever the loaded database does (reloaded, or unusable), so
        a cache of verdicts keyed on it is never staler than the check interval."""
        if self._clock() >= self._next_check:
            self.reload_if_changed()
        return self._generation

    def country(self, ip: IPAddress) -> str | None:
        """The ISO 3166-1 alpha-2 code where the database locates `ip`, None if it has none.

        Raises GeoIPUnavailable when the database cannot be read. Pass IPv4-mapped IPv6
        addresses folded to IPv4 (`network.parse_address` does): MaxMind's own files alias
        `::ffff:0:0/96` to the IPv4 tree, but other writers do not.
        """
        if self._clock() >= self._next_check:
            self.reload_if_changed()
        loaded = self._loaded
        if loaded is None:
            raise GeoIPUnavailable(f"GeoIP database {self._path!r} is unavailable")
        if ip.version == 6 and loaded.ip_version == 4:
            return None  # an IPv4-only database knows nothing of IPv6
        try:
            record = loaded.reader.get(ip)
        except Exception as e:
            if not self._lookup_error_logged:
                self._lookup_error_logged = True
                logger.warning(
                    "GeoIP database %r failed a lookup, it may be damaged; addresses whose "
                    "lookup fails are refused: %s",
                    self._path,
                    e,
                )
            raise GeoIPUnavailable(f"GeoIP lookup failed in {self._path!r}: {e}") from e
        return _iso_code(record)

    def reload_if_changed(self) -> None:
        """Re-open the file if it was replaced, or retry after a failure. Never raises."""
        if not self._lock.acquire(blocking=False):
            return  # another thread is checking; keep using what is loaded
        try:
            if self._closed:
                return
            self._next_check = self._clock() + self._check_interval_s
            self._reload_if_changed()
        finally:
            self._lock.release()

    def _reload_if_changed(self) -> None:
        try:
            signature = _signature(self._path)
        except OSError as e:
            self._fail(f"cannot read {self._path!r}: {e}")
            return
        if self._loaded is not None and self._loaded.signature == signature:
            return
        try:
            loaded = _load(self._path)
        except GeoIPError as e:
            self._fail(str(e))
            return
        self._loaded = loaded
        self._generation += 1
        self._last_error = None
        self._lookup_error_logged = False
        self._set_gauge(loaded.build_epoch)
        logger.info(
            "GeoIP database %r (re)loaded: type=%s build_epoch=%d",
            self._path,
            loaded.database_type,
            loaded.build_epoch,
        )

    def _fail(self, message: str) -> None:
        if self._loaded is not None:
            self._generation += 1
        self._loaded = None
        self._set_gauge(0)
        if message != self._last_error:
            logger.warning(
                "GeoIP database unusable, addresses that need a country lookup are refused "
                "until it loads again (retrying every %gs): %s",
                self._check_interval_s,
                message,
            )
        self._last_error = message

    def _set_gauge(self, value: int) -> None:
        if self._metrics_enabled:
            metrics.GEOIP_BUILD_TIMESTAMP.set(value)

    def close(self) -> None:
        """Release the file; later lookups raise GeoIPUnavailable."""
        with self._lock:
            self._closed = True
            self._generation += 1
            loaded, self._loaded = self._loaded, None
        if loaded is not None:
            loaded.reader.close()


def load_geoip_database(
    policy: NetworkPolicy,
    *,
    check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    metrics_enabled: bool = True,
) -> GeoIPDatabase | None:
    """The database `network.allow_countries` needs, or None when no country is allowed.

    Raises GuardConfigError (key `network.geoip_database`) when countries are allowed and the
    file is missing, unreadable, corrupt or not a Country/City database. Without
    `allow_countries` the database would never be consulted, so it is not opened.
    """
    if not policy.allow_countries:
        return None
    path = policy.geoip_database
    if path is None:
        raise GuardConfigError(
            "network.geoip_database",
            f"is required when network.allow_countries is set: give the path of {ACCEPTED}",
        )
    try:
        return GeoIPDatabase(
            path, check_interval_s=check_interval_s, clock=clock, metrics_enabled=metrics_enabled
        )
    except GeoIPError as e:
        raise GuardConfigError("network.geoip_database", f"{e}; expected {ACCEPTED}") from None
