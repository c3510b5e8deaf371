"""Where an Optuna study lives, opened safely: a journal file (one driver) or a database (many).

Why this module exists (each problem was measured with the plain ``JournalStorage`` it replaces):

* **Damaged journals.** Optuna's journal is a JSON-lines log, one storage operation per line,
  replayed from the top on every open. A garbage line made ``--resume`` die with a raw
  ``JSONDecodeError``; a *torn* last line (the process was killed mid-write, so the file does not
  end with ``\\n``) is skipped by Optuna on read, but the next append is glued onto it, and from
  then on the study cannot be read at all. :func:`repair_journal` cuts the file back to the last
  complete record before the first bad one (a backup of the damaged file is kept beside it) and
  checks that Optuna loads what remains.
* **Two drivers on one journal.** Nothing stopped a second driver from resuming a study a live
  driver was running; both appended, and ``--resume``'s recovery failed the other's live
  trials. :class:`StudyLock` gives one driver exclusive ownership of a journal file.
* **Several drivers on one study.** That is what a database is for: an RDB URL opens
  :class:`optuna.storages.RDBStorage` with Optuna's trial heartbeat, so the trials of a driver that
  died are told apart from a live driver's (see :data:`HEARTBEAT_INTERVAL`).

:class:`StudyStorage` ties these together for ``study.search``; every problem a user can fix is a
:class:`~initsearch.errors.UsageError` of one line (a database password is never shown).
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import socket
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from initsearch.errors import UsageError

#: Seconds between two heartbeats of a live trial in a database storage. The driver records one
#: row update per live trial per interval and looks for dead drivers' trials once per interval:
#: a minute is negligible load even for many drivers on one database, and trials train for
#: minutes to hours, so nothing finer is needed.
HEARTBEAT_INTERVAL = 60
#: Seconds without a heartbeat after which a RUNNING trial counts as its driver's death
#: (:func:`optuna.storages.fail_stale_trials` marks it FAIL; the driver queues it again). Five
#: missed beats: a live driver survives a database restart or failover, a suspended laptop or a
#: long pause of a few minutes without its trials being taken away (a false alarm costs a live
#: trial), while a dead driver's trials are reclaimed within about six minutes (this plus one
#: interval until the next look), short next to the trials themselves. Optuna's default, two
#: intervals, is too eager for that trade.
GRACE_PERIOD = 300
#: Seconds to wait for a database server to answer a connection (PostgreSQL, MySQL), so that an
#: unreachable host fails in seconds, not after the operating system's TCP timeout (minutes).
CONNECT_TIMEOUT = 10

LOCK_SUFFIX = ".driver-lock"
"""Suffix of :class:`StudyLock`'s file beside the journal. Optuna's own append locks
(``JournalFileSymlinkLock`` and ``JournalFileOpenLock``) create and delete ``<journal>.lock`` and
``<journal>.lock<uuid>.rename`` around every write; this name stays clear of both."""

_OPTUNA_LOCK_SUFFIX = ".lock"
_RDB_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb")
_DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'",
                    "MySQLdb": "mysqlclient", "pymysql": "pymysql", "mysql": "mysql-connector-python",
                    "pg8000": "pg8000", "asyncpg": "asyncpg"}
# SQLAlchemy 2.1 reads a bare postgresql:// as postgresql+psycopg (psycopg 3) and mysql:// as
# mysql+mysqldb; where only the other common driver is installed, use that one.
_FALLBACK_DRIVERS = {"postgresql": ("psycopg", "psycopg2", "postgresql+psycopg2"),
                     "mysql": ("MySQLdb", "pymysql", "mysql+pymysql"),
                     "mariadb": ("MySQLdb", "pymysql", "mariadb+pymysql")}
_TIMEOUT_DRIVERS = {"postgresql", "postgresql+psycopg2", "postgresql+psycopg", "mysql",
                    "mysql+mysqldb", "mysql+pymysql", "mariadb", "mariadb+mysqldb",
                    "mariadb+pymysql"}
try:  # the op codes of optuna's journal records (optuna 5.0: 0..10)
    from optuna.storages.journal._storage import JournalOperation as _Op
    _OP_CODES = frozenset(int(op) for op in _Op)
    _CREATE_STUDY, _DELETE_STUDY = int(_Op.CREATE_STUDY), int(_Op.DELETE_STUDY)
except ImportError:  # pragma: no cover - a later optuna moved it
    _OP_CODES, _CREATE_STUDY, _DELETE_STUDY = frozenset(range(11)), 0, 1


def _stderr(line: str) -> None:
    print(f"initsearch: {line}", file=sys.stderr)


# -- the journal: repair --------------------------------------------------------------------------

def _scan(data: bytes) -> tuple[int, int, int, str | None]:
    """Read a journal the way Optuna does, stopping at the first record it could not use.

    Returns (bytes of the good prefix, records in it, records in the file, what was wrong).
    A record is one line. Optuna's reader (``JournalFileBackend.read_logs``) applies a line only
    if it ends with ``\\n`` and parses as JSON; the replay then needs a JSON object with a known
    ``op_code`` and a ``worker_id``. Anything else is bad, and everything after the first bad line
    goes with it: later records refer to studies and trials that earlier ones created.
    """
    lines = _split_lf(data)  # not bytes.splitlines: that also splits on \r, \x0b, ...
    good = 0
    for n, line in enumerate(lines):
        problem = None
        if not line.endswith(b"\n"):
            problem = "is torn (no end of line)"
        else:
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                problem = "is not JSON"
            else:
                if not isinstance(record, dict) or record.get("op_code") not in _OP_CODES \
                        or isinstance(record.get("op_code"), bool) or "worker_id" not in record:
                    problem = "is not an Optuna journal record"
        if problem:
            return good, n, len(lines), f"record {n + 1} {problem}"
        good += len(line)
    return good, len(lines), len(lines), None


def _split_lf(data: bytes) -> list[bytes]:
    """Lines as Optuna's reader sees them (iterating a binary file: split after each ``\\n``)."""
    lines, start = [], 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        lines.append(data[start:end])
        start = end
    return lines


def _studies_in(data: bytes) -> list[str]:
    """Names of the studies a journal's readable records create (and do not delete), in order."""
    good, _, _, _ = _scan(data)
    names: list[str] = []  # position = the study id Optuna gives it
    alive: list[bool] = []
    for line in _split_lf(data[:good]):
        record = json.loads(line)
        if record["op_code"] == _CREATE_STUDY and record.get("study_name") not in names:
            names.append(record.get("study_name"))
            alive.append(True)
        elif record["op_code"] == _DELETE_STUDY and isinstance(record.get("study_id"), int) \
                and 0 <= record["study_id"] < len(alive):
            alive[record["study_id"]] = False
    return [name for name, ok in zip(names, alive) if ok and isinstance(name, str)]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _backup(path: Path, data: bytes) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        backup = path.with_name(f"{path.name}.bak-{stamp}" + (f".{n}" if n else ""))
        try:
            _write_new(backup, data)
            return backup
        except FileExistsError:
            continue
    raise UsageError(f"cannot back up journal {path}: too many backups named {path.name}.bak-{stamp}*")


def _verify(path: Path) -> list[str]:
    """Load every study of the journal at ``path`` with Optuna; returns their names."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    names = [s.study_name for s in storage.get_all_studies()]
    for name in names:
        optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    return names


def repair_journal(path: str | os.PathLike, *, report: Callable[[str], None] | None = None) -> int:
    """Cut a damaged Optuna journal back to its last good record; return how many were dropped.

    A journal whose every line is a complete record (or an empty file: no records, nothing
    damaged) is left untouched and 0 is returned. Otherwise the damaged file is copied to
    ``<name>.bak-<UTC time>`` beside it, everything from the first bad or torn record on is cut,
    Optuna is made to load every study in what remains, and the result replaces the journal
    atomically (temp file, fsync, ``os.replace``). ``report`` (if given) gets the one line
    ``journal X: dropped N damaged record(s) (backup at Y)``.

    Nothing sensible left (no record creating a study survives, or Optuna cannot load what does)
    raises :class:`UsageError` naming the journal and the backup; the journal is then left as it
    was. Call it only while no other process appends to the journal (hold :class:`StudyLock`): a
    record being written looks torn.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read journal {path}: {exc.strerror or exc}; check the path "
                         "and its permissions") from None
    good, kept, total, problem = _scan(data)
    if good == len(data):
        return 0
    dropped = total - kept
    backup = _backup(path, data)
    where = f"journal {path} is damaged ({problem})"
    fix = f"(backup at {backup}); start a new --study"
    if kept == 0 or not any(json.loads(line)["op_code"] == _CREATE_STUDY
                            for line in _split_lf(data[:good])):
        raise UsageError(f"{where} and no study is created before that {fix}")
    tmp = path.with_name(f".{path.name}.repair-{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        _write_new(tmp, data[:good])
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        try:
            names = _verify(tmp)
        except Exception as exc:  # whatever Optuna's replay trips on
            raise UsageError(f"{where} and Optuna cannot load the records before that either "
                             f"({type(exc).__name__}: {_one_line(exc)}) {fix}") from None
        if not names:
            raise UsageError(f"{where} and no study is left before that {fix}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    if report is not None:
        report(f"journal {path}: dropped {dropped} damaged record(s) (backup at {backup})")
    return dropped


# -- the journal: one driver ----------------------------------------------------------------------

_HELD_FDS: set[int] = set()


def _close_held_in_child() -> None:
    # A forked child (a data-loader worker, say) inherits the lock's descriptor, and flock lasts
    # until the last one closes: the study would stay locked after the driver died. Closing the
    # child's copy leaves the parent's lock in place.
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class StudyLock:
    """Exclusive ownership of a journal-file study by one driver process.

    ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<journal>.driver-lock`` (see :data:`LOCK_SUFFIX` for
    why not ``<journal>.lock``); once held, the file records ``pid``, ``host``, ``study`` and the
    start time, which a second driver's refusal names. The kernel drops a flock when its holder
    dies, ``kill -9`` included, so a dead driver never leaves a stale lock on a local disk, and
    the file itself may stay behind (it is the flock that counts, not the file). On NFS, flock
    may be emulated with byte-range locks or not honoured at all, depending on client and server:
    there, run one driver per study by hand, or use a database storage.

    Use as a context manager, or :meth:`acquire` / :meth:`release`. A second lock on the same
    journal, even in the same process, is refused.
    """

    def __init__(self, path: str | os.PathLike, *, study: str | None = None) -> None:
        self.journal = Path(path)
        self.path = self.journal.with_name(self.journal.name + LOCK_SUFFIX)
        self.study = study or self.journal.stem
        self._fd: int | None = None
        self._pid = os.getpid()  # a forked child must not release (or close) its parent's lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> StudyLock:
        """Take the lock, or raise :class:`UsageError` naming the driver that holds it."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot create the study lock {self.path}: {exc.strerror or exc}; "
                             "check that the folder exists and is writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise UsageError(f"study {holder.get('study', self.study)!r} is being run by another "
                             f"driver (pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                             f"since {holder.get('since', '?')}); wait for it to finish or stop it"
                             ) from None
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"cannot lock {self.path}: {exc.strerror or exc} (the file system may "
                             "not support flock); use a local folder or a database --storage"
                             ) from None
        _HELD_FDS.add(fd)
        self._fd, self._pid = fd, os.getpid()
        info = {"pid": os.getpid(), "host": socket.gethostname(), "study": self.study,
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        try:  # best effort: the details only make a refusal more helpful
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError:
            pass
        return self

    def release(self) -> None:
        """Give the lock up (the file stays; it is harmless)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._pid != os.getpid():  # our copy of the descriptor was closed at fork
            return
        _HELD_FDS.discard(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _holder(self, fd: int) -> dict[str, Any]:
        # The holder writes its details just after taking the lock: give it a moment.
        for _ in range(20):
            try:
                info = json.loads(os.pread(fd, 4096, 0) or b"null")
                if isinstance(info, dict):
                    return info
            except ValueError:
                pass
            time.sleep(0.05)
        return {}

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.release()


# -- databases -------------------------------------------------------------------------------------

def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        head, sep, tail = url.partition("://")
        if sep and "@" in tail:
            cred, _, host = tail.rpartition("@")
            return f"{head}://{cred.partition(':')[0]}:***@{host}" if ":" in cred else url
        return url


def _one_line(exc: BaseException, secret: str | None = None) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    text = " ".join(text.splitlines()[0].split()) if text else type(exc).__name__
    text = text.split("(Background on this error at:")[0].strip()
    return text.replace(secret, "***") if secret else text


def _missing_module(exc: BaseException) -> str | None:
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name.partition(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


# -- the study's storage ---------------------------------------------------------------------------

class StudyStorage:
    """Where ``search`` keeps its Optuna study, chosen by ``url``:

    * ``None``: one journal file per study, ``<journals>/<study>.journal``.
    * a path, ``journal:PATH``, ``file:PATH`` or ``file:///PATH``: that journal file (it may hold
      several studies); a path to an existing folder or ending in ``/``: that folder instead of
      ``journals``. One driver at a time (:class:`StudyLock`); repaired before it is opened.
    * ``sqlite:///...``, ``postgresql://...`` (``+psycopg2`` etc.), ``mysql...``: an
      :class:`optuna.storages.RDBStorage` with the trial heartbeat on (:data:`HEARTBEAT_INTERVAL`,
      :data:`GRACE_PERIOD`), which several drivers may share. SQLite suits drivers on one
      machine only (never on NFS).

    :meth:`open` takes the journal's lock (kept until :meth:`close`; a context manager closes),
    repairs the journal and opens it. Nothing is written before :meth:`open` or :meth:`study_names`
    on a database (which creates Optuna's tables).
    """

    def __init__(self, url: str | None, journals: str | os.PathLike, *,
                 heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD) -> None:
        self.url = url
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.journals: Path | None = Path(journals)
        self.journal_file: Path | None = None  # one shared journal file, when url names one
        self._rdb: RDBStorage | None = None
        self._locks: dict[Path, StudyLock] = {}
        if url is None or not url.strip():
            self.kind = "journal"
            return
        url = url.strip()
        for prefix in ("journal:", "file://", "file:"):
            if url.startswith(prefix):
                url = url[len(prefix):]
                break
        else:
            if "://" in url:
                scheme = url.partition("://")[0].lower()
                backend = scheme.partition("+")[0]
                if backend == "postgres":
                    raise UsageError(f"storage {mask_url(url)}: write postgresql://, not postgres://")
                if backend not in _RDB_BACKENDS:
                    raise UsageError(f"storage {mask_url(url)}: unsupported kind {scheme!r}; use a "
                                     "journal file path, sqlite:///FILE, postgresql://... or "
                                     "mysql://...")
                self.kind, self.journals, self.url = "rdb", None, url
                return
        if not url:
            raise UsageError(f"storage {self.url!r} names no file; give a journal file path")
        self.kind = "journal"
        path = Path(url).expanduser()
        if path.is_dir() or url.endswith(("/", os.sep)):
            self.journals = path
        else:
            self.journals, self.journal_file = None, path

    # -- what it is
    @property
    def multi_driver(self) -> bool:
        """True: several drivers may run one study at once (a database); False: one driver,
        held by :class:`StudyLock` (a journal file)."""
        return self.kind == "rdb"

    @property
    def display(self) -> str:
        """Where the studies are, for messages (a database password masked)."""
        if self.kind == "rdb":
            return mask_url(self.url or "")
        return str(self.journal_file or self.journals)

    def journal_path(self, study: str) -> Path | None:
        """The journal file that holds ``study`` (None for a database)."""
        if self.kind == "rdb":
            return None
        if self.journal_file is not None:
            return self.journal_file
        if not study or study.startswith(".") or any(c in study for c in "/\\\0"):
            raise UsageError(f"study name {study!r} cannot be a file name; use letters, digits, "
                             "'-', '_' and '.'")
        assert self.journals is not None
        return self.journals / f"{study}.journal"

    # -- what it holds
    def study_names(self) -> list[str]:
        """Names of the studies stored, oldest first (a journal folder: by file time; a database
        or a shared journal file: by creation). Empty journal files hold no study."""
        if self.kind == "rdb":
            return self._guard(lambda: optuna.study.get_all_study_names(self._open_rdb()))
        if self.journal_file is not None:
            return _studies_in(self._read(self.journal_file))
        assert self.journals is not None
        found = []
        for p in self.journals.glob("*.journal"):
            try:
                st = p.stat()
            except OSError:
                continue
            if st.st_size > 0:
                found.append((st.st_mtime, p.stem))
        return [name for _, name in sorted(found)]

    def exists(self, study: str) -> bool:
        """Whether ``study`` is stored. Journal folder: its journal file is not empty (a damaged
        one counts, so a new study never lands in it; ``--resume`` then repairs it). Shared
        journal file: a readable record creates it. Database: Optuna knows the name."""
        if self.kind == "rdb":
            def known() -> bool:
                try:
                    self._open_rdb().get_study_id_from_name(study)
                    return True
                except KeyError:
                    return False
            return self._guard(known)
        path = self.journal_path(study)
        assert path is not None
        if self.journal_file is not None:
            return path.exists() and study in _studies_in(self._read(path))
        try:
            return path.stat().st_size > 0
        except FileNotFoundError:
            return False

    # -- opening
    def open(self, study: str, *, report: Callable[[str], None] | None = _stderr) -> BaseStorage:
        """The Optuna storage for ``study``, ready for ``optuna.create_study`` / ``load_study``.

        Journal: takes the journal's :class:`StudyLock` (held until :meth:`close`), removes the
        append lock a killed driver left behind, repairs the journal (``report`` gets the one
        line saying what was dropped) and opens it. Database: connects (heartbeat on). Raises
        :class:`UsageError` for a study another driver holds, a journal beyond repair, an
        unreachable database or a missing database driver package.
        """
        if self.kind == "rdb":
            return self._open_rdb()
        path = self.journal_path(study)
        assert path is not None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
        fresh = path not in self._locks
        if fresh:
            self._locks[path] = StudyLock(path, study=study).acquire()
        try:
            self._drop_stale_append_lock(path)
            if path.exists():
                repair_journal(path, report=report)
            try:
                return JournalStorage(JournalFileBackend(str(path)))
            except Exception as exc:  # a journal that parses but Optuna cannot replay
                raise UsageError(f"Optuna cannot read journal {path} ({type(exc).__name__}: "
                                 f"{_one_line(exc)}); move it away or start a new --study"
                                 ) from None
        except BaseException:
            if fresh:
                self._locks.pop(path).release()
            raise

    def peek(self, study: str) -> optuna.Study | None:
        """``study`` loaded to be read only: no lock, no repair (another driver may be running
        it); None if it cannot be read as it is. For looking at earlier studies, never for
        writing to one."""
        try:
            if self.kind == "rdb":
                storage: BaseStorage = self._open_rdb()
            else:
                path = self.journal_path(study)
                if path is None or not path.is_file():
                    return None
                storage = JournalStorage(JournalFileBackend(str(path)))
            return optuna.load_study(study_name=study, storage=storage)
        except Exception:  # damaged, or gone since it was listed
            return None

    def close(self) -> None:
        """Release the journal locks :meth:`open` took (a database needs nothing)."""
        while self._locks:
            self._locks.popitem()[1].release()
        if self._rdb is not None:
            self._rdb.engine.dispose()

    def __enter__(self) -> StudyStorage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- helpers
    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise UsageError(f"cannot read journal {path}: {exc.strerror or exc}") from None

    @staticmethod
    def _drop_stale_append_lock(path: Path) -> None:
        # Optuna's append lock (a symlink <journal>.lock, made and removed around each write)
        # survives a driver killed mid-write, which is exactly when a journal needs repair; left
        # there, the next append waits Optuna's 30 s grace period and warns. Holding the driver
        # lock, no other initsearch driver can be writing, so it is stale.
        stale = path.with_name(path.name + _OPTUNA_LOCK_SUFFIX)
        if stale.is_symlink():
            stale.unlink(missing_ok=True)

    def _guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except UsageError:
            raise
        except Exception as exc:
            raise self._db_error(exc) from None

    def _open_rdb(self) -> RDBStorage:
        if self._rdb is not None:
            return self._rdb
        assert self.url is not None
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(self.url)
        except Exception:
            raise UsageError(f"storage {mask_url(self.url)} is not a valid database URL; write "
                             "it as dialect[+driver]://user:password@host[:port]/database") from None
        url = self.url
        if parsed.drivername in _FALLBACK_DRIVERS:
            default, other, drivername = _FALLBACK_DRIVERS[parsed.drivername]
            if importlib.util.find_spec(default) is None and importlib.util.find_spec(other):
                parsed = parsed.set(drivername=drivername)
                url = parsed.render_as_string(hide_password=False)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() != "sqlite":
            kwargs["pool_pre_ping"] = True  # a long search outlives idle connections
            if parsed.drivername in _TIMEOUT_DRIVERS and "connect_timeout" not in parsed.query:
                kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        try:
            with warnings.catch_warnings():  # the heartbeat arguments are "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._rdb = RDBStorage(url, engine_kwargs=kwargs,
                                       heartbeat_interval=self.heartbeat_interval,
                                       grace_period=self.grace_period)
        except Exception as exc:
            raise self._db_error(exc) from None
        return self._rdb

    def _db_error(self, exc: BaseException) -> UsageError:
        url = mask_url(self.url or "")
        missing = _missing_module(exc)
        if missing:
            package = _DRIVER_PACKAGES.get(missing, missing)
            return UsageError(f"storage {url} needs the Python package {missing!r}, which is not "
                              f"installed; pip install {package}, or pass another --storage")
        try:
            from sqlalchemy.engine import make_url

            secret = make_url(self.url or "").password
        except Exception:
            secret = None
        if (self.url or "").startswith("sqlite"):
            fix = "check that the file's folder exists and is writable"
        else:
            fix = ("check that the database server is up and the URL (host, port, user, password, "
                   "database) is right")
        return UsageError(f"cannot open the Optuna storage {url} ({_one_line(exc, secret)}); {fix}, "
                          "or drop --storage to use a local journal file")
