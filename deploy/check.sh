#!/usr/bin/env bash
# Offline checks of deploy/: every YAML document parses (and the YAML embedded in ConfigMaps),
# the shell scripts parse, and, where a kubectl and a cluster are reachable, a client-side
# dry run of the manifests. Needs python3 with PyYAML.
set -euo pipefail
cd "$(dirname "$0")"
if ! python3 -c 'import yaml' 2>/dev/null; then
    echo "deploy/check.sh: python3 with PyYAML is needed (pip install pyyaml)" >&2
    exit 1
fi
python3 - <<'PY'
import glob, yaml
files = sorted(glob.glob("**/*.yaml", recursive=True) + glob.glob("**/*.yml", recursive=True))
for f in files:
    docs = [d for d in yaml.safe_load_all(open(f)) if d is not None]
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "ConfigMap":
            for k, v in d.get("data", {}).items():
                if k.endswith((".yaml", ".yml")):
                    yaml.safe_load(v)
    print(f"{f}: {len(docs)} document(s) parse")
PY
for s in *.sh; do bash -n "$s" && echo "$s: parses"; done
sh -n entrypoint.sh
if command -v kubectl >/dev/null && kubectl version --request-timeout=5s >/dev/null 2>&1; then
    kubectl apply --dry-run=client --validate=false -f k8s/
else
    echo "kubectl dry run skipped: no kubectl, or no cluster to discover the API from"
fi
