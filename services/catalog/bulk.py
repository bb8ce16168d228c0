"""Bulk download scripts: a POSIX shell script of cURL calls that fetches every file of a search result.

The script never holds a token: it reads ``SKYPORT_TOKEN`` from its environment and hands it to cURL on its
standard input (``--config -``), so that it appears neither in the file nor on a command line that ``ps``
shows. Files are saved under their archive ID (two programs' instruments may well reuse an original file
name), resumed when a partial copy is there, skipped when a copy with the right sha256 is, and each one is
checked with ``sha256sum`` (``shasum -a 256`` where there is none) after its download. Everything runs from
one function called on the last line, so a script cut short in its own download does nothing at all.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from services.catalog.dataset_events import download_url

TOKEN_VARIABLE = "SKYPORT_TOKEN"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_SUFFIX = re.compile(r"(\.fits\.gz|\.fits\.fz|\.[A-Za-z0-9]{1,8})$", re.IGNORECASE)


@dataclass(frozen=True)
class ScriptFile:
    archive_id: str
    version: int
    original_filename: str
    sha256: str
    size_bytes: int


def local_name(archive_id: str, original_filename: str) -> str:
    """The name a file is saved under: its archive ID, made safe, with the original file's extension."""
    suffix = _SUFFIX.search(original_filename)
    name = _UNSAFE.sub("_", archive_id).lstrip(".-") or "file"
    extension = suffix.group(1).lower() if suffix else ""
    return name if name.lower().endswith(extension) else name + extension


_PRELUDE = """\
#!/bin/sh
# Skyport bulk download: {count} file(s), {total_bytes} bytes, listed {generated} for {who}.
# Search: {search}
#
# Run it in the folder to download into:
#     {token_variable}=<your API token> sh {script_name}
# Without {token_variable} only public files download. A file already here with the right sha256 is
# skipped, a partial one is resumed, and every file is checked with sha256sum after its download.
# Running the script again fetches only what is missing or wrong.
set -u

{token_variable}="${{{token_variable}:-}}"
downloaded=0
failures=0

sha256_of() {{
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}}

get() {{  # get URL FILE [cURL options]: the token reaches cURL on its standard input, never its command line
    url=$1; file=$2; shift 2
    if [ -n "${token_variable}" ]; then
        printf 'header = "Authorization: Bearer %s"\\n' "${token_variable}" |
            curl --config - --fail --silent --show-error --retry 3 --output "$file" "$@" "$url"
    else
        curl --fail --silent --show-error --retry 3 --output "$file" "$@" "$url"
    fi
}}

fetch() {{  # fetch URL FILE SHA256 SIZE
    if [ -f "$2" ]; then
        if [ "$(sha256_of "$2")" = "$3" ]; then
            echo "already here: $2"
            return 0
        fi
        # A file as long as the real one (or longer) but wrong cannot be resumed: start again.
        size=$(wc -c < "$2")
        if [ $((size)) -ge "$4" ]; then rm -f "$2"; fi
    fi
    if ! get "$1" "$2" --continue-at -; then
        rm -f "$2"
        if ! get "$1" "$2"; then
            echo "FAILED: $2 ($1)" >&2
            failures=$((failures + 1))
            return 0
        fi
    fi
    if [ "$(sha256_of "$2")" = "$3" ]; then
        echo "downloaded: $2"
        downloaded=$((downloaded + 1))
    else
        echo "CHECKSUM MISMATCH, removed: $2 (run the script again)" >&2
        rm -f "$2"
        failures=$((failures + 1))
    fi
}}

main() {{
"""

_CODA = """\
    echo "$downloaded downloaded, $failures failed, of {count} file(s)"
{more}    [ "$failures" -eq 0 ]
}}

main
"""


def render_script(
    files: Iterable[ScriptFile],
    *,
    public_url: str,
    search: str,
    who: str,
    generated: datetime,
    script_name: str,
    next_script_url: str | None = None,
) -> str:
    """The whole script; ``next_script_url`` names the script of the rest of a result too long for one."""
    listed = list(files)
    lines = [
        "    fetch "
        + " ".join(
            (
                shlex.quote(download_url(public_url, _url_path_segment(f.archive_id), f.version)),
                shlex.quote(local_name(f.archive_id, f.original_filename)),
                f.sha256 if re.fullmatch(r"[0-9a-f]{64}", f.sha256) else "invalid",
                str(int(f.size_bytes)),
            )
        )
        for f in listed
    ]
    more = ""
    if next_script_url is not None:
        more = f"    echo {shlex.quote('More files match this search; their script: ' + next_script_url)}\n"
    prelude = _PRELUDE.format(
        count=len(listed),
        total_bytes=sum(f.size_bytes for f in listed),
        generated=generated.isoformat(timespec="seconds"),
        who=_comment(who),
        search=_comment(search or "(everything)"),
        token_variable=TOKEN_VARIABLE,
        script_name=script_name,
    )
    return prelude + "".join(line + "\n" for line in lines) + _CODA.format(count=len(listed), more=more)


def _url_path_segment(archive_id: str) -> str:
    return quote(archive_id, safe="")


def _comment(text: str) -> str:
    """Text safe inside a shell comment: one line."""
    return re.sub(r"[\r\n\x00-\x1f]", " ", text)[:2000]
