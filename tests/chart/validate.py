"""Validates `helm template` output of charts/wsgiscale without a cluster.

Every built-in object is checked against the Kubernetes API's strict JSON schemas
(kubernetes-validate: an unknown or misspelt field is an error) for the oldest and newest
Kubernetes the chart supports, then the chart's own promises are checked: selectors match the
pods and never carry the version, the CRD is the generated one, RBAC is least privilege, the
operator's environment variables are flags the operator has, the pods are hardened. The
activator (its Deployment, headless Service, PodDisruptionBudget, ServiceAccount and RBAC) is
checked the same way, against the activator's own flags and the image that must hold it, and
with the wiring between the two: the operator's flags name its Service and route table, its
pods are never selected by the operator's selectors, and nothing of it renders when it is off.

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
                    dashboards=None,
                    activator=dict(replicas=2, sa="wsgiscale-activator", admin_port=9090, drain=50,
                                   grace=60, log_format="json", log_level="info", pdb=1)),
    "namespaced-single": dict(fullname="wsgiscale", replicas=1, crd=False, keep=True,
                              cluster_rbac=False, role_namespaces=["shop", "blog"], lease=False,
                              pdb=False, metrics_service=True, service_monitor=False,
                              sa="wsgiscale", image="ghcr.io/wsgiscale/wsgiscale-operator:{app}",
                              namespaces="shop,blog", port=8080, pod_monitor=["shop", "blog"],
                              prometheus_rule=False, dashboards=None,
                              activator=dict(replicas=2, sa="wsgiscale-activator", admin_port=9090,
                                             drain=50, grace=60, log_format="plain",
                                             log_level="wsgiscale_operator=debug,kube=info", pdb=1)),
    # The release namespace is one of the watched ones: the app rules reach it, so the
    # operator's activation Role adds no EndpointSlice rule of its own.
    "namespaced-release": dict(fullname="wsgiscale", replicas=2, crd=True, keep=True,
                               cluster_rbac=False, role_namespaces=["wsgiscale-system", "shop"],
                               lease=True, pdb=True, metrics_service=True, service_monitor=False,
                               sa="wsgiscale", image="ghcr.io/wsgiscale/wsgiscale-operator:{app}",
                               namespaces="wsgiscale-system,shop", port=8080, pod_monitor=None,
                               prometheus_rule=False, dashboards=None,
                               activator=dict(replicas=2, sa="wsgiscale-activator", admin_port=9090,
                                              drain=50, grace=60, log_format="json", log_level="info",
                                              pdb=1)),
    "monitoring-ha": dict(fullname="wso", replicas=3, crd=True, keep=False, cluster_rbac=True,
                          lease=True, pdb=True, metrics_service=True, service_monitor=True,
                          sa="wso", image="registry.example.com/mirror/wsgiscale-operator:0.2.0-rc.1",
                          namespaces=None, port=9090, pod_monitor=True, prometheus_rule=True,
                          dashboards="monitoring",
                          activator=dict(replicas=3, sa="edge", admin_port=9191, drain=20, grace=30,
                                         log_format="json", log_level="wsgiscale_activator=debug,info",
                                         pdb="50%", sa_created=False, backlog="2")),
    "external-rbac": dict(fullname="wsgiscale", replicas=2, crd=True, keep=True, cluster_rbac=None,
                          lease=None, pdb=True, metrics_service=False, service_monitor=False,
                          sa="preexisting-operator", image="ghcr.io/wsgiscale/wsgiscale-operator:{app}",
                          namespaces=None, port=8080, pod_monitor=None, prometheus_rule=False,
                          dashboards=None, activator=None),
    "activator-off": dict(fullname="wsgiscale", replicas=2, crd=True, keep=True, cluster_rbac=True,
                          lease=True, pdb=True, metrics_service=True, service_monitor=False,
                          sa="wsgiscale", image="ghcr.io/wsgiscale/wsgiscale-operator:{app}",
                          namespaces=None, port=8080, pod_monitor=None, prometheus_rule=False,
                          dashboards=None, activator=None),
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
# What the operator needs on top of APP_RULES when the activator is on: it writes each app's
# public EndpointSlice.
APP_RULES_ACTIVATOR = {
    ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch", "create", "update", "patch", "delete"},
}
# The activator reads the apps' EndpointSlices and nothing else in the app namespaces.
ACTIVATOR_ENDPOINT_RULES = {("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"}}

# Flags of the operator's activator wiring, being added to operator/src/cli.rs on another
# branch: the chart may pass them before cli.rs declares them (the operator ignores an
# environment variable it does not know). Once cli.rs declares one, this check fails until
# it is removed from here, so the allowance cannot outlive its reason.
PENDING_OPERATOR_ENV: set = set()

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
        check("resourceNames" not in r or r["resources"] in (["leases"], ["configmaps"]),
              f"{role['metadata']['name']}: resourceNames outside leases and the route table")
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
    """A string constant of the operator's Rust source (layout.rs: the pod's names)."""
    src = open(os.path.join(ROOT, "operator/src/layout.rs")).read()
    m = re.search(rf'pub const {name}: &str = "([^"]*)";', src)
    return m.group(1) if m else None


def operator_env_names():
    src = open(os.path.join(ROOT, "operator/src/cli.rs")).read()
    return set(re.findall(r'env = "(WSGISCALE_[A-Z_]+)"', src))


def activator_env_names():
    src = open(os.path.join(ROOT, "activator/src/main.rs")).read()
    return set(re.findall(r'env = "(WSGISCALE_ACTIVATOR_[A-Z_]+)"', src))


def activator_app_ports():
    """FIRST_APP_PORT..=LAST_APP_PORT of core/src/activator.rs: the ports apps get."""
    src = open(os.path.join(ROOT, "core/src/activator.rs")).read()
    first, last = (int(re.search(rf"pub const {n}: u16 = (\d+);", src).group(1)) for n in ("FIRST_APP_PORT", "LAST_APP_PORT"))
    return first, last


def image_binaries():
    """The binaries the operator image's final stage copies into /usr/local/bin."""
    text = open(os.path.join(ROOT, "operator/Dockerfile")).read()
    final = text.rsplit("\nFROM ", 1)[-1]
    out = set()
    for line in re.findall(r"^COPY --from=\S+ (.+)$", final, re.M):
        *sources, dest = line.split()
        if dest.endswith("/"):
            out.update(dest + os.path.basename(src) for src in sources)
        else:
            out.add(dest)
    return out


def main():
    case, path = sys.argv[1], sys.argv[2]
    want = CASES[case]
    chart = yaml.safe_load(open(os.path.join(ROOT, "charts/wsgiscale/Chart.yaml")))
    app_version = chart["appVersion"]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    fullname = want["fullname"]
    app_rules = {**APP_RULES, **(APP_RULES_ACTIVATOR if want["activator"] else {})}

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

    # The activator's objects are checked in 8; 3 to 7 are the operator's.
    all_docs = docs
    adocs = [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "activator"]
    docs = [d for d in docs if d not in adocs]

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
        check(name in known or name in PENDING_OPERATOR_ENV, f"{name} is not a flag of wsgiscale-operator run ({sorted(known)})")
    for name in sorted(PENDING_OPERATOR_ENV & known):
        errors.append(f"{name} is now a flag in operator/src/cli.rs: remove it from PENDING_OPERATOR_ENV in {__file__}")
    pending = sorted(PENDING_OPERATOR_ENV & set(env) - known)
    if pending:
        print(f"{case}: note: {', '.join(pending)} not in operator/src/cli.rs yet (PENDING_OPERATOR_ENV)")
    check(env.get("WSGISCALE_OPERATOR_NAMESPACES") == want["namespaces"], f"namespaces {env.get('WSGISCALE_OPERATOR_NAMESPACES')}")
    check(env.get("WSGISCALE_OPERATOR_HTTP_BIND") == f"0.0.0.0:{want['port']}", "http bind")
    check(env.get("WSGISCALE_OPERATOR_LEADER_ELECTION") == ("true" if want["lease"] is not False else "false"), "leader election flag")
    check("WSGISCALE_OPERATOR_IDENTITY" in env, "identity from the pod name")
    if want["activator"]:
        check(env.get("WSGISCALE_ACTIVATOR_SERVICE") == f"{fullname}-activator", "the operator's --activator-service")
        check(env.get("WSGISCALE_ACTIVATOR_ROUTES") == f"{fullname}-activator-routes", "the operator's --activator-routes")
    else:
        check(not [n for n in env if n.startswith("WSGISCALE_ACTIVATOR_")], "activator flags although the activator is off")

    # 4. ServiceAccount.
    sas = by_kind(docs, "ServiceAccount")
    if want["sa"] == "preexisting-operator":
        check(not sas, "a ServiceAccount was created although serviceAccount.create is false")
    else:
        check([s["metadata"]["name"] for s in sas] == [want["sa"]], "ServiceAccount")

    # 5. RBAC: exactly what the operator needs.
    croles, roles = by_kind(docs, "ClusterRole"), by_kind(docs, "Role")
    lease_roles = [r for r in roles if r["metadata"]["name"] == f"{fullname}-leader-election"]
    activation_roles = [r for r in roles if r["metadata"]["name"] == f"{fullname}-activation"]
    app_roles = [r for r in roles if r not in lease_roles + activation_roles]
    if want["cluster_rbac"] is None:
        check(not croles and not roles and not by_kind(docs, "ClusterRoleBinding") and not by_kind(docs, "RoleBinding"),
              "RBAC rendered although rbac.create is false")
    elif want["cluster_rbac"]:
        (cr,) = croles
        check(rules_of(cr) == app_rules, f"ClusterRole rules: {rules_of(cr)}")
        check(not app_roles, "namespaced Roles next to the ClusterRole")
    else:
        check(not croles, "a ClusterRole although watchNamespaces is set")
        check(sorted(r["metadata"]["namespace"] for r in app_roles) == sorted(want["role_namespaces"]), "Roles per namespace")
        for r in app_roles:
            check(rules_of(r) == app_rules, f"Role rules in {r['metadata']['namespace']}")
    if want["lease"]:
        (lr,) = lease_roles
        check(lr["metadata"]["namespace"] == NAMESPACE, "lease Role outside the release namespace")
        check(rules_of(lr) == {("coordination.k8s.io", "leases"): {"create", "get", "update"}}, "lease rules")
        named = [r for r in lr["rules"] if r.get("resourceNames")]
        check(named and named[0]["resourceNames"] == [want["fullname"]] and set(named[0]["verbs"]) == {"get", "update"},
              "get/update not limited to the operator's Lease")
    else:
        check(not lease_roles, "a lease Role without leader election")
    # The operator's side of the activator: the route table by name (create cannot be named),
    # and the activator Service's EndpointSlices only where the app rules do not reach.
    if want["activator"] and want["cluster_rbac"] is not None:
        (ar,) = activation_roles
        check(ar["metadata"]["namespace"] == NAMESPACE, "activation Role outside the release namespace")
        routes = f"{fullname}-activator-routes"
        by_names = {(tuple(r.get("resourceNames", [])), tuple(r["resources"])): set(r["verbs"]) for r in ar["rules"]}
        want_rules = {((), ("configmaps",)): {"create"},
                      ((routes,), ("configmaps",)): {"get", "list", "watch", "update", "patch"}}
        if NAMESPACE not in (want.get("role_namespaces") or []) and want["cluster_rbac"] is False:
            want_rules[((), ("endpointslices",))] = {"get", "list", "watch"}
        check(by_names == want_rules, f"activation Role rules {by_names}")
    else:
        check(not activation_roles, "an activation Role although the activator is off or RBAC is not the chart's")
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

    # 8. The activator.
    check_activator(want, adocs, docs, dep, c)

    if errors:
        print(f"{case}: {len(errors)} problem(s):")
        for e in errors:
            print(f"  - {e}")
        sys.exit(1)
    print(f"{case}: {len(all_docs)} objects valid")


def check_activator(want, adocs, odocs, op_dep, op_container):
    """The activator's objects (`adocs`, labelled component=activator) against the case, the
    activator's flags, the operator image, and the operator's objects (`odocs`)."""
    a, fullname = want["activator"], want["fullname"]
    name = f"{fullname}-activator"
    if not a:
        check(not adocs, f"activator objects although it is off: {[d['kind'] + '/' + d['metadata']['name'] for d in adocs]}")
        check(not [d for d in odocs if d["metadata"]["name"].startswith(f"{fullname}-activat")],
              "objects of the activator's wiring although it is off")
        return
    app_version = op_dep["metadata"]["labels"]["app.kubernetes.io/version"]

    # The Deployment: the operator's image, the activator's command, its own selector.
    (dep,) = by_kind(adocs, "Deployment")
    check(dep["metadata"]["name"] == name, f"activator Deployment name {dep['metadata']['name']}")
    check(dep["spec"]["replicas"] == a["replicas"], "activator replicas")
    selector = dep["spec"]["selector"]["matchLabels"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    check(matches(selector, labels), "the activator Deployment's selector misses its pods")
    for k, v in selector.items():
        check(app_version not in v and "chart" not in k and "version" not in k, f"activator selector label {k}={v} carries a version")
    op_pod_labels = op_dep["spec"]["template"]["metadata"]["labels"]
    # Neither side's selectors may take the other's pods (the operator's Deployment,
    # metrics Service, PDB; the activator's Deployment, Service, PDB).
    for d in odocs:
        sel = (d["spec"].get("selector", {}) if d["kind"] == "Service" else
               d["spec"].get("selector", {}).get("matchLabels") if d["kind"] in ("Deployment", "PodDisruptionBudget") else None)
        if sel:
            check(not matches(sel, labels), f"{d['kind']}/{d['metadata']['name']} selects the activator pods")
    check(not matches(selector, op_pod_labels), "the activator's selector takes the operator pods")
    for sm in by_kind(odocs, "ServiceMonitor"):
        for svc in by_kind(adocs, "Service"):
            check(not matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]),
                  "the operator's ServiceMonitor selects the activator Service")

    spec = pod["spec"]
    (c,) = spec["containers"]
    check(c["image"] == op_container["image"] and c["imagePullPolicy"] == op_container["imagePullPolicy"],
          f"activator image {c['image']} is not the operator's {op_container['image']}")
    check(c["command"] == ["/usr/local/bin/wsgiscale-activator"] and "args" not in c, f"activator command {c.get('command')} {c.get('args')}")
    shipped = image_binaries()
    check(c["command"][0] in shipped, f"operator/Dockerfile does not ship {c['command'][0]} (it ships {sorted(shipped)})")
    check(spec["serviceAccountName"] == a["sa"], f"activator serviceAccountName {spec['serviceAccountName']}")
    op_spec = op_dep["spec"]["template"]["spec"]
    check(spec.get("securityContext") == op_spec.get("securityContext"), "activator pod securityContext differs from the operator's")
    check(c.get("securityContext") == op_container.get("securityContext"), "activator container securityContext differs from the operator's")
    check(spec["securityContext"].get("runAsNonRoot") is True, "activator pod may run as root")
    check(c["securityContext"].get("readOnlyRootFilesystem") is True, "activator: writable root filesystem")
    check(c["securityContext"].get("capabilities", {}).get("drop") == ["ALL"], "activator: capabilities not dropped")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"admin": a["admin_port"]}, f"activator ports {ports}")
    first, last = activator_app_ports()
    check(not first <= a["admin_port"] <= last, f"admin port {a['admin_port']} among the apps' ports {first}-{last}")
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, "activator liveness probe")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, "activator readiness probe")
    check("lifecycle" not in c, "the activator drains on SIGTERM; no preStop")
    check(spec["terminationGracePeriodSeconds"] == a["grace"], "activator grace period")
    check("cpu" not in c.get("resources", {}).get("limits", {}) and c.get("resources", {}).get("requests"),
          f"activator resources {c.get('resources')}")

    # Its flags: each one wsgiscale-activator has, with the wiring's values.
    env = {e["name"]: e for e in c["env"]}
    known = activator_env_names()
    for n in env:
        check(n in known, f"{n} is not a flag of wsgiscale-activator ({sorted(known)})")
    value = lambda n: env.get(n, {}).get("value")
    field = lambda n: env.get(n, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    check(field("WSGISCALE_ACTIVATOR_NAMESPACE") == "metadata.namespace", "activator namespace from the downward API")
    check(field("WSGISCALE_ACTIVATOR_POD_NAME") == "metadata.name", "activator pod name from the downward API")
    op_env = {e["name"]: e.get("value") for e in op_container["env"]}
    check(value("WSGISCALE_ACTIVATOR_ROUTES") == f"{fullname}-activator-routes" == op_env.get("WSGISCALE_ACTIVATOR_ROUTES"),
          "the activator and the operator name different route tables")
    metrics = [s for s in by_kind(odocs, "Service") if s["metadata"]["name"] == f"{fullname}-metrics"]
    check(metrics and value("WSGISCALE_ACTIVATOR_OPERATOR_URL")
          == f"http://{fullname}-metrics.{NAMESPACE}.svc:{metrics[0]['spec']['ports'][0]['port']}",
          f"operator URL {value('WSGISCALE_ACTIVATOR_OPERATOR_URL')} is not the metrics Service")
    check(value("WSGISCALE_ACTIVATOR_ADMIN_BIND") == f"0.0.0.0:{a['admin_port']}", "activator admin bind")
    # Namespaced mode: it watches EndpointSlices in the operator's namespaces only (its Roles).
    check(value("WSGISCALE_ACTIVATOR_WATCH_NAMESPACES") == op_env.get("WSGISCALE_OPERATOR_NAMESPACES"),
          f"activator watch namespaces {value('WSGISCALE_ACTIVATOR_WATCH_NAMESPACES')} differ from the operator's {op_env.get('WSGISCALE_OPERATOR_NAMESPACES')}")
    drain = int(value("WSGISCALE_ACTIVATOR_DRAIN_TIMEOUT_SECONDS") or 0)
    check(drain == a["drain"] and drain < spec["terminationGracePeriodSeconds"], f"drain timeout {drain}")
    check(value("WSGISCALE_ACTIVATOR_LOG_FORMAT") == a["log_format"], f"activator log format {value('WSGISCALE_ACTIVATOR_LOG_FORMAT')}")
    check(value("WSGISCALE_ACTIVATOR_LOG_LEVEL") == a["log_level"], f"activator log level {value('WSGISCALE_ACTIVATOR_LOG_LEVEL')}")
    check(value("WSGISCALE_ACTIVATOR_BACKLOG_PER_SLOT") == a.get("backlog", "auto"),
          f"activator backlog per slot {value('WSGISCALE_ACTIVATOR_BACKLOG_PER_SLOT')}")

    # Spread: every constraint selects pods (the chart fills in the activator's own selector).
    tscs = spec.get("topologySpreadConstraints", [])
    check(tscs, "the activator replicas are not spread")
    for t in tscs:
        check("labelSelector" in t, f"spread constraint without labelSelector: {t}")
    check(any(matches(t["labelSelector"].get("matchLabels", {}), labels) for t in tscs),
          "no spread constraint selects the activator pods")

    # The headless Service whose EndpointSlices the operator reads.
    (svc,) = by_kind(adocs, "Service")
    check(svc["metadata"]["name"] == name == op_env.get("WSGISCALE_ACTIVATOR_SERVICE"), "the operator's --activator-service is not the activator Service")
    check(svc["spec"].get("clusterIP") == "None", "the activator Service is not headless")
    check(svc["spec"]["selector"] == selector, "the activator Service's selector is not the Deployment's")
    check(svc["spec"]["ports"] == [{"name": "admin", "port": a["admin_port"], "targetPort": "admin", "protocol": "TCP"}],
          f"activator Service ports {svc['spec']['ports']}")

    # PodDisruptionBudget, ServiceAccount.
    (pdb,) = by_kind(adocs, "PodDisruptionBudget")
    check(pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"].get("maxUnavailable") == a["pdb"],
          f"activator PDB {pdb['spec']}")
    sas = [s["metadata"]["name"] for s in by_kind(adocs, "ServiceAccount")]
    check(sas == ([] if a.get("sa_created") is False else [a["sa"]]), f"activator ServiceAccounts {sas}")

    # RBAC: EndpointSlices read where the apps are, its route table read by name; nothing more.
    croles, roles = by_kind(adocs, "ClusterRole"), by_kind(adocs, "Role")
    if want["cluster_rbac"] is None:
        check(not croles and not roles, "activator RBAC although rbac.create is false")
        return
    routes_roles = [r for r in roles if r["metadata"]["name"] == f"{name}-routes"]
    ep_roles = [r for r in roles if r not in routes_roles]
    if want["cluster_rbac"]:
        (cr,) = croles
        check(cr["metadata"]["name"] == name and rules_of(cr) == ACTIVATOR_ENDPOINT_RULES, f"activator ClusterRole {rules_of(cr)}")
        check(not ep_roles, "activator Roles next to its ClusterRole")
    else:
        check(not croles, "an activator ClusterRole although watchNamespaces is set")
        check(sorted(r["metadata"]["namespace"] for r in ep_roles) == sorted(want["role_namespaces"]), "activator Roles per namespace")
        for r in ep_roles:
            check(rules_of(r) == ACTIVATOR_ENDPOINT_RULES, f"activator Role rules in {r['metadata']['namespace']}")
    (rr,) = routes_roles
    check(rr["metadata"]["namespace"] == NAMESPACE, "the activator's route table Role is outside the release namespace")
    check(rr["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [f"{name}-routes"],
                           "verbs": ["get", "list", "watch"]}], f"activator route table rules {rr['rules']}")
    bindings = by_kind(adocs, "ClusterRoleBinding") + by_kind(adocs, "RoleBinding")
    check(len(bindings) == len(croles) + len(roles), "activator roles and bindings do not pair up")
    for b in bindings:
        targets = croles if b["roleRef"]["kind"] == "ClusterRole" else roles
        check(any(t["metadata"]["name"] == b["roleRef"]["name"] and t["metadata"].get("namespace") == b["metadata"].get("namespace")
                  for t in targets), f"{b['kind']} {b['metadata']['name']} points at a missing role")
        check(b["subjects"] == [{"kind": "ServiceAccount", "name": a["sa"], "namespace": NAMESPACE}],
              f"activator {b['kind']} subjects {b['subjects']}")


if __name__ == "__main__":
    main()
