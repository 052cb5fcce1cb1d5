"""Validates `helm template` output of charts/wsgiscale without a cluster.

Every built-in object is checked against the Kubernetes API's strict JSON schemas
(kubernetes-validate: an unknown or misspelt field is an error) for the oldest and newest
Kubernetes the chart supports, then the chart's own promises are checked: selectors match the
pods and never carry the version, the CRD is the generated one, RBAC is least privilege, the
operator's environment variables are flags the operator has, the pods are hardened.

The Prometheus Operator's objects (ServiceMonitor, PodMonitor, PrometheusRule) are checked
against the openAPIV3Schema of that project's published CRDs, vendored in tests/chart/crds
(see its README for the version), strictly: an unknown field is an error. The dashboards'
ConfigMaps must hold the chart's dashboard files as valid JSON, labelled for Grafana's sidecar.

Usage: validate.py CASE RENDERED.yaml   (CASE names the values file used: see CASES)
"""
import copy
import glob
import json
import os
import re
import sys

import jsonschema
import yaml
import kubernetes_validate

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S_VERSIONS = ["1.30.0", "1.37.0"]
NAMESPACE = "wsgiscale-system"

# What each values file must produce (pod_monitor: the namespaces it selects, True for all).
CASES = {
    "default": dict(fullname="wsgiscale", replicas=2, crd=True, keep=True, cluster_rbac=True,
                    lease=True, pdb=True, metrics_service=True, service_monitor=False,
                    sa="wsgiscale", image="ghcr.io/wsgiscale/wsgiscale-operator:{app}",
                    namespaces=None, port=8080, pod_monitor=None, prometheus_rule=False,
                    dashboards=None),
    "namespaced-single": dict(fullname="wsgiscale", replicas=1, crd=False, keep=True,
                              cluster_rbac=False, role_namespaces=["shop", "blog"], lease=False,
                              pdb=False, metrics_service=True, service_monitor=False,
                              sa="wsgiscale", image="ghcr.io/wsgiscale/wsgiscale-operator:{app}",
                              namespaces="shop,blog", port=8080, pod_monitor=["shop", "blog"],
                              prometheus_rule=False, dashboards=None),
    "monitoring-ha": dict(fullname="wso", replicas=3, crd=True, keep=False, cluster_rbac=True,
                          lease=True, pdb=True, metrics_service=True, service_monitor=True,
                          sa="wso", image="registry.example.com/mirror/wsgiscale-operator:0.2.0-rc.1",
                          namespaces=None, port=9090, pod_monitor=True, prometheus_rule=True,
                          dashboards="monitoring"),
    "external-rbac": dict(fullname="wsgiscale", replicas=2, crd=True, keep=True, cluster_rbac=None,
                          lease=None, pdb=True, metrics_service=False, service_monitor=False,
                          sa="preexisting-operator", image="ghcr.io/wsgiscale/wsgiscale-operator:{app}",
                          namespaces=None, port=8080, pod_monitor=None, prometheus_rule=False,
                          dashboards=None),
}

# The permissions the operator needs, and no more (apiGroup, resource) -> verbs.
APP_RULES = {
    ("wsgiscale.dev", "wsgiapps"): {"get", "list", "watch"},
    ("wsgiscale.dev", "wsgiapps/status"): {"get", "patch", "update"},
    ("wsgiscale.dev", "wsgiapps/finalizers"): {"update"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("autoscaling", "horizontalpodautoscalers"): {"list"},
    ("events.k8s.io", "events"): {"create", "patch"},
}

errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    check(len(found) == 1, f"expected one {kind}, found {len(found)}")
    return found[0] if found else {}


def rules_of(role):
    out = {}
    for r in role.get("rules", []):
        check("resourceNames" not in r or r["resources"] == ["leases"],
              f"{role['metadata']['name']}: resourceNames outside leases")
        for g in r["apiGroups"]:
            for res in r["resources"]:
                out.setdefault((g, res), set()).update(r["verbs"])
    for (g, res), verbs in out.items():
        check("*" not in verbs and res != "*" and g != "*", f"wildcard in {role['metadata']['name']}: {g}/{res}")
    return out


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def strict(schema):
    """The schema with additionalProperties: false wherever it lists properties and does not
    say otherwise (as the API server prunes and field validation refuses unknown fields)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


def monitoring_schemas():
    """(apiVersion, kind) -> the strict schema of the vendored Prometheus Operator CRDs."""
    out = {}
    for path in glob.glob(os.path.join(ROOT, "tests/chart/crds/*.yaml")):
        crd = yaml.safe_load(open(path))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            out[(f"{group}/{v['name']}", kind)] = strict(v["schema"]["openAPIV3Schema"])
    return out


def operator_const(name):
    """A string constant of the operator's Rust source (render.rs)."""
    src = open(os.path.join(ROOT, "operator/src/render.rs")).read()
    m = re.search(rf'pub const {name}: &str = "([^"]*)";', src)
    return m.group(1) if m else None


def operator_env_names():
    src = open(os.path.join(ROOT, "operator/src/cli.rs")).read()
    return set(re.findall(r'env = "(WSGISCALE_OPERATOR_[A-Z_]+)"', src))


def main():
    case, path = sys.argv[1], sys.argv[2]
    want = CASES[case]
    chart = yaml.safe_load(open(os.path.join(ROOT, "charts/wsgiscale/Chart.yaml")))
    app_version = chart["appVersion"]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]

    # 1. The Kubernetes schemas, strict; the Prometheus Operator's from its CRDs.
    schemas = monitoring_schemas()
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            schema = schemas.get((d["apiVersion"], d["kind"]))
            if schema is None:
                errors.append(f"{d['kind']} {d['apiVersion']}: no vendored CRD in tests/chart/crds")
                continue
            for e in jsonschema.Draft7Validator(schema).iter_errors(d):
                errors.append(f"{d['kind']}/{d['metadata']['name']} invalid against its CRD: "
                              f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}")
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{d['kind']}/{d['metadata']['name']} invalid for Kubernetes {v}: "
                              f"{'.'.join(str(p) for p in e.path)}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(e.message)

    # 2. Labels and selectors.
    for d in docs:
        labels = d["metadata"].get("labels", {})
        check(labels.get("app.kubernetes.io/managed-by") == "Helm", f"{d['kind']} lacks the chart labels")
        check(d["kind"] in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding")
              or d["metadata"].get("namespace") in [NAMESPACE] + want.get("role_namespaces", [])
              + ([want["dashboards"]] if isinstance(want["dashboards"], str) else []),
              f"{d['kind']}/{d['metadata']['name']} has no namespace")

    dep = one(docs, "Deployment")
    check(dep["metadata"]["name"] == want["fullname"], f"Deployment name {dep['metadata']['name']}")
    check(dep["spec"]["replicas"] == want["replicas"], "replicas")
    selector = dep["spec"]["selector"]["matchLabels"]
    pod = dep["spec"]["template"]
    check(matches(selector, pod["metadata"]["labels"]), "the Deployment's selector misses its pods")
    for k, v in selector.items():
        check(app_version not in v and "chart" not in k and "version" not in k,
              f"selector label {k}={v} carries a version")

    # 3. The pod: identity, image, hardening, probes, flags.
    spec = pod["spec"]
    check(spec["serviceAccountName"] == want["sa"], f"serviceAccountName {spec['serviceAccountName']}")
    (c,) = spec["containers"]
    check(c["image"] == want["image"].format(app=app_version), f"image {c['image']}")
    check(c["args"] == ["run"], "the operator runs `run`")
    check(spec["securityContext"].get("runAsNonRoot") is True, "pod may run as root")
    check(spec["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault", "no seccomp")
    sc = c["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True, "writable root filesystem")
    check(sc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities not dropped")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get("http-metrics") == want["port"], f"metrics port {ports}")
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}, "liveness probe")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}, "readiness probe")
    env = {e["name"]: e.get("value") for e in c["env"]}
    known = operator_env_names()
    for name in env:
        check(name in known, f"{name} is not a flag of wsgiscale-operator run ({sorted(known)})")
    check(env.get("WSGISCALE_OPERATOR_NAMESPACES") == want["namespaces"], f"namespaces {env.get('WSGISCALE_OPERATOR_NAMESPACES')}")
    check(env.get("WSGISCALE_OPERATOR_HTTP_BIND") == f"0.0.0.0:{want['port']}", "http bind")
    check(env.get("WSGISCALE_OPERATOR_LEADER_ELECTION") == ("true" if want["lease"] is not False else "false"), "leader election flag")
    check("WSGISCALE_OPERATOR_IDENTITY" in env, "identity from the pod name")

    # 4. ServiceAccount.
    sas = by_kind(docs, "ServiceAccount")
    if want["sa"] == "preexisting-operator":
        check(not sas, "a ServiceAccount was created although serviceAccount.create is false")
    else:
        check([s["metadata"]["name"] for s in sas] == [want["sa"]], "ServiceAccount")

    # 5. RBAC: exactly what the operator needs.
    croles, roles = by_kind(docs, "ClusterRole"), by_kind(docs, "Role")
    app_roles = [r for r in roles if not r["metadata"]["name"].endswith("-leader-election")]
    lease_roles = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    if want["cluster_rbac"] is None:
        check(not croles and not roles and not by_kind(docs, "ClusterRoleBinding") and not by_kind(docs, "RoleBinding"),
              "RBAC rendered although rbac.create is false")
    elif want["cluster_rbac"]:
        (cr,) = croles
        check(rules_of(cr) == APP_RULES, f"ClusterRole rules: {rules_of(cr)}")
        check(not app_roles, "namespaced Roles next to the ClusterRole")
    else:
        check(not croles, "a ClusterRole although watchNamespaces is set")
        check(sorted(r["metadata"]["namespace"] for r in app_roles) == sorted(want["role_namespaces"]), "Roles per namespace")
        for r in app_roles:
            check(rules_of(r) == APP_RULES, f"Role rules in {r['metadata']['namespace']}")
    if want["lease"]:
        (lr,) = lease_roles
        check(lr["metadata"]["namespace"] == NAMESPACE, "lease Role outside the release namespace")
        check(rules_of(lr) == {("coordination.k8s.io", "leases"): {"create", "get", "update"}}, "lease rules")
        named = [r for r in lr["rules"] if r.get("resourceNames")]
        check(named and named[0]["resourceNames"] == [want["fullname"]] and set(named[0]["verbs"]) == {"get", "update"},
              "get/update not limited to the operator's Lease")
    else:
        check(not lease_roles, "a lease Role without leader election")
    for b in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        targets = croles if b["roleRef"]["kind"] == "ClusterRole" else roles
        check(any(t["metadata"]["name"] == b["roleRef"]["name"] and t["metadata"].get("namespace") == b["metadata"].get("namespace")
                  for t in targets), f"{b['kind']} {b['metadata']['name']} points at a missing role")
        check(b["subjects"] == [{"kind": "ServiceAccount", "name": want["sa"], "namespace": NAMESPACE}],
              f"{b['kind']} subjects {b['subjects']}")

    # 6. Metrics Service, ServiceMonitor, PDB.
    svcs = by_kind(docs, "Service")
    if want["metrics_service"]:
        (svc,) = svcs
        check(matches(svc["spec"]["selector"], pod["metadata"]["labels"]), "metrics Service misses the pods")
        check(svc["spec"]["ports"][0]["targetPort"] == "http-metrics", "metrics Service target port")
    else:
        check(not svcs, "metrics Service rendered although disabled")
    sms = by_kind(docs, "ServiceMonitor")
    if want["service_monitor"]:
        (sm,) = sms
        check(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
        check(matches(sm["spec"]["selector"]["matchLabels"], svcs[0]["metadata"]["labels"]), "ServiceMonitor misses the Service")
        check(sm["spec"]["endpoints"][0]["port"] == svcs[0]["spec"]["ports"][0]["name"], "ServiceMonitor port name")
        check(sm["metadata"]["labels"].get("release") == "prometheus", "ServiceMonitor extra labels")
        check(sm["spec"]["endpoints"][0].get("honorLabels") is True,
              "ServiceMonitor must honor the per-app series' namespace label")
    else:
        check(not sms, "ServiceMonitor rendered although disabled")

    # 6b. The app pods' PodMonitor, the alerts, the dashboards.
    pms = by_kind(docs, "PodMonitor")
    if want["pod_monitor"]:
        (pm,) = pms
        check(pm["spec"]["selector"] == {"matchExpressions": [{"key": "wsgiscale.dev/app", "operator": "Exists"}]},
              f"PodMonitor selector {pm['spec']['selector']}")
        ns_sel = pm["spec"]["namespaceSelector"]
        check(ns_sel == ({"any": True} if want["pod_monitor"] is True else {"matchNames": want["pod_monitor"]}),
              f"PodMonitor namespaceSelector {ns_sel}")
        (ep,) = pm["spec"]["podMetricsEndpoints"]
        check(ep["port"] == operator_const("ADMIN_PORT_NAME"), f"PodMonitor port {ep['port']} is not the pods' admin port")
        check(ep["path"] == "/metrics", "PodMonitor path")
        check({"sourceLabels": ["__meta_kubernetes_pod_label_wsgiscale_dev_app"], "targetLabel": "wsgiapp"}
              in ep.get("relabelings", []), "PodMonitor does not add the wsgiapp label")
        check(pm["metadata"]["labels"].get("release") == "prometheus", "PodMonitor extra labels")
    else:
        check(not pms, "PodMonitor rendered although disabled")
    prs = by_kind(docs, "PrometheusRule")
    rules_file = yaml.safe_load(open(os.path.join(ROOT, "charts/wsgiscale/files/prometheus/rules.yaml")))
    if want["prometheus_rule"]:
        (pr,) = prs
        got = copy.deepcopy(pr["spec"])
        for g in got["groups"]:
            for r in g["rules"]:
                check(r.get("labels", {}).get("team") == "platform", f"{r.get('alert')} lacks additionalRuleLabels")
                r.get("labels", {}).pop("team", None)
        check(got == rules_file, "the PrometheusRule differs from files/prometheus/rules.yaml")
        for g in pr["spec"]["groups"]:
            for r in g["rules"]:
                check(r.get("annotations", {}).get("runbook_url", "").startswith(
                    "https://github.com/wsgiscale/wsgiscale/blob/main/docs/runbook.md#"), f"{r.get('alert')} has no runbook_url")
    else:
        check(not prs, "PrometheusRule rendered although disabled")
    files = sorted(glob.glob(os.path.join(ROOT, "charts/wsgiscale/files/dashboards/*.json")))
    dash_cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith(want["fullname"] + "-dashboard-")]
    if want["dashboards"]:
        check(len(dash_cms) == len(files) >= 2, f"{len(dash_cms)} dashboard ConfigMaps for {len(files)} files")
        for cm in dash_cms:
            check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", f"{cm['metadata']['name']} lacks the sidecar label")
            check(cm["metadata"]["namespace"] == want["dashboards"], f"{cm['metadata']['name']} namespace")
            (key, text), = cm["data"].items()
            try:
                dash = json.loads(text)
            except ValueError as e:
                errors.append(f"{cm['metadata']['name']}: {key} is not JSON: {e}")
                continue
            source = os.path.join(ROOT, "charts/wsgiscale/files/dashboards", key)
            check(os.path.exists(source) and dash == json.load(open(source)), f"{key} differs from its file")
            check(dash.get("uid") and dash.get("panels"), f"{key}: no uid or no panels")
            for panel in dash.get("panels", []):
                check(all(t.get("expr") for t in panel.get("targets", [])) and panel.get("targets"),
                      f"{key}: panel {panel.get('title')} has no query")
    else:
        check(not dash_cms, "dashboard ConfigMaps rendered although disabled")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if want["pdb"]:
        (pdb,) = pdbs
        check(pdb["spec"]["selector"]["matchLabels"] == selector, "PDB selector")
    else:
        check(not pdbs, "PDB rendered although disabled")

    # 7. The CRD is the generated one, kept on uninstall when asked.
    crds = by_kind(docs, "CustomResourceDefinition")
    if want["crd"]:
        (crd,) = crds
        generated = yaml.safe_load(open(os.path.join(ROOT, "crds/wsgiapp.yaml")))
        check(crd["metadata"]["name"] == generated["metadata"]["name"], "CRD name")
        check(crd["spec"] == generated["spec"], "the chart's CRD differs from crds/wsgiapp.yaml")
        keep = crd["metadata"].get("annotations", {}).get("helm.sh/resource-policy")
        check(keep == ("keep" if want["keep"] else None), f"CRD resource-policy {keep}")
    else:
        check(not crds, "CRD rendered although crds.install is false")

    if errors:
        print(f"{case}: {len(errors)} problem(s):")
        for e in errors:
            print(f"  - {e}")
        sys.exit(1)
    print(f"{case}: {len(docs)} objects valid")


if __name__ == "__main__":
    main()
