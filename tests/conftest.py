"""Settings every test shares.

Commands print in the language of the locale (``caravane.i18n.cli_language``); tests that read
their output expect English unless they ask for another language, whatever the machine's locale.
"""

import os

for _var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "CARAVANE_LOCALES"):
    os.environ.pop(_var, None)
os.environ["LANG"] = "C.UTF-8"
