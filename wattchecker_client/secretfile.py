"""Files holding a secret (a key, a password, a token): read once, stripped, and their mode judged.

One rule for every such file, so the BigQuery key, the MQTT password and the
page's token warn alike: the service's own group may read it (the README
installs them 0640), other users may not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from .errors import SetupError


def others_may_read(path: Path, mode: int) -> Optional[str]:
    """The warning for a file other users can read or write, or None."""
    if mode & 0o007:
        return f"{path} is readable by other users (mode {mode & 0o777:o}): chmod o-rwx it"
    return None


def read_secret(key: str, path: Path) -> Tuple[str, Optional[str]]:
    """(the file's text without surrounding white space, a mode warning or None); SetupError naming ``key``."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror or exc}: write the secret there "
                         f"(sudo install -o root -g wattchecker -m 0640 /dev/stdin {path}, type it, Ctrl-D), "
                         f"or remove {key.rpartition('.')[2]}", key=key) from None
    except UnicodeDecodeError as exc:
        raise SetupError(f"{path} is not UTF-8 text (byte {exc.start}): it holds only the secret, as text",
                         key=key) from None
    if not text:
        raise SetupError(f"{path} is empty: write the secret there", key=key)
    return text, others_may_read(path, mode)
