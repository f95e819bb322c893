"""Print `name==version` for each package of a `pip install --dry-run --report` JSON that is
installed in this environment (the resolved set of an extra, less what only that extra
brings and torch, whose build is chosen separately).

    python .ci/pins_from_report.py REPORT.json > pins.txt
"""

import json
import sys
from importlib.metadata import distributions

from packaging.utils import canonicalize_name

installed = {canonicalize_name(d.metadata["Name"]) for d in distributions()}
report = json.load(open(sys.argv[1]))
for item in report["install"]:
    name = canonicalize_name(item["metadata"]["name"])
    if name in installed and name not in ("torch", "east"):
        print(f"{name}=={item['metadata']['version']}")
