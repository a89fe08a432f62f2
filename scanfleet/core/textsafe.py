"""Text from a cluster, a profile or an auditor, made safe to show.

Container-derived text (auditor stderr, control titles and messages, pod names reported
back by the API) may carry terminal escape sequences (ANSI CSI colour/cursor codes, OSC
hyperlinks and window-title writes), C0/C1 control characters and Unicode bidi overrides
that make a line read differently than it is stored ("Trojan Source"). This module removes
them; the renderers and the terminal output call it, every format alike.

- `strip_controls(text, keep_newlines=True)`: ANSI/OSC/DCS sequences, C0 controls except
  tab and (optionally) newline, DEL, C1 controls (U+0080-U+009F) and the bidi embedding,
  override and isolate characters (U+202A-U+202E, U+2066-U+2069) are removed.
- `strip_hidden(text)`: escape sequences, DEL, C1 and bidi removed, C0 left to the caller.
- `terminal_line(text)`: one terminal line: `strip_controls` with line breaks as spaces.

Pure: no I/O, no logging.
"""

from __future__ import annotations

import re

# ESC [ ... final byte (CSI), ESC ] ... BEL or ESC \ (OSC), ESC P/X/^/_ ... ST (DCS, SOS,
# PM, APC), their 8-bit forms (CSI U+009B, OSC U+009D) and two-character escapes (ESC
# followed by one byte). Any other C1 character is removed by the control range below.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x9d[^\x07\x1b\x9c]*(?:\x07|\x9c|\x1b\\)?"
    r"|\x1b[@-Z\\-_]"
    r"|\x1b"
)
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_CONTROLS_KEEP_NL = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{BIDI}]")
_CONTROLS = re.compile(f"[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f{BIDI}]")


def strip_controls(text: str, keep_newlines: bool = True) -> str:
    """`text` without escape sequences, control characters (tab kept) and bidi controls."""
    text = _ESCAPES.sub("", text)
    if keep_newlines:
        text = text.replace("\r\n", "\n")
        return _CONTROLS_KEEP_NL.sub("", text)
    return _CONTROLS.sub(" ", text)


_HIDDEN = re.compile(f"[\\x7f-\\x9f{BIDI}]")


def strip_hidden(text: str) -> str:
    """Escape sequences, DEL, C1 and bidi controls removed; C0 controls left for the caller
    (XML replaces them, terminals get `strip_controls`)."""
    return _HIDDEN.sub("", _ESCAPES.sub("", text))


def terminal_line(text: object) -> str:
    """One line printed to a terminal: no escapes, no controls, and line breaks become
    spaces, so a message cannot forge the lines that follow it."""
    return strip_controls(str(text), keep_newlines=False)
