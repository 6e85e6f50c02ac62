"""Renders and lints the chart with the real Helm engine (the helm-python-sdk
wheel, Helm as a library; no cluster). Reads {"chart", "values", "name",
"namespace"} as JSON on stdin; prints {"rendered": {template: text},
"crds": {file: text} (the chart's crds/, which Helm applies as they are),
"lint": report} or {"error": message} as JSON."""
import json
import sys

import helm_python

args = json.load(sys.stdin)
try:
    chart = helm_python.Chart.load(args["chart"])
    rendered = chart.render(
        values=args["values"],
        name=args["name"],
        namespace=args["namespace"],
        is_install=True,
    )
    lint = helm_python.lint(
        args["chart"], args["values"], strict=True, namespace=args["namespace"]
    )
    crds = {crd["name"]: crd["data"] for crd in chart.crds}
    json.dump({"rendered": rendered, "crds": crds, "lint": lint}, sys.stdout)
except helm_python.HelmError as e:
    json.dump({"error": str(e)}, sys.stdout)
