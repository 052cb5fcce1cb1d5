"""Validates `helm template` output of charts/wsgiscale without a cluster.

Every built-in object is checked against the Kubernetes API's strict JSON schemas
(kubernetes-validate: an unknown or misspelt field is an error) for the oldest and newest
Kubernetes the chart supports, then the chart's own promises are checked: selectors match the
pods and never carry the version, the CRD is the generated one, RBAC is least privilege, the
operator's environment variables are flags the operator has, the pods are hardened.

Usage: validate.py CASE RENDERED.yaml   (CASE names the values file used: see CASES)
"""
import os
import re
import sys

import yaml
import kubernetes_validate

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S_VERSIONS = ["1.30.0", "1.37.0"]
NAMESPACE = "wsgiscale-system"

# What each values file must produce.
CASES = {
    "default": dict(fullname="wsgiscale", replicas=2, crd=True, keep=True, cluster_rbac=True,
                    lease=True, pdb=True, metrics_service=True, service_monitor=False,
                    sa="wsgiscale", image="ghcr.io/wsgiscale/wsgiscale-operator:{app}",
                    namespaces=None, port=8080),
    "namespaced-single": dict(fullname="wsgiscale", replicas=1, crd=False, keep=True,
                              cluster_rbac=False, role_namespaces=["shop", "blog"], lease=False,
                              pdb=False, metrics_service=True, service_monitor=False,
                              sa="wsgiscale", image="ghcr.io/wsgiscale/wsgiscale-operator:{app}",
                              namespaces="shop,blog", port=8080),
    "monitoring-ha": dict(fullname="wso", replicas=3, crd=True, keep=False, cluster_rbac=True,
                          lease=True, pdb=True, metrics_service=True, service_monitor=True,
                          sa="wso", image="registry.example.com/mirror/wsgiscale-operator:0.2.0-rc.1",
                          namespaces=None, port=9090),
    "external-rbac": dict(fullname="wsgiscale", replicas=2, crd=True, keep=True, cluster_rbac=None,
                          lease=None, pdb=True, metrics_service=False, service_monitor=False,
                          sa="preexisting-operator", image="ghcr.io/wsgiscale/wsgiscale-operator:{app}",
                          namespaces=None, port=8080),
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


def operator_env_names():
    src = open(os.path.join(ROOT, "operator/src/cli.rs")).read()
    return set(re.findall(r'env = "(WSGISCALE_OPERATOR_[A-Z_]+)"', src))


def main():
    case, path = sys.argv[1], sys.argv[2]
    want = CASES[case]
    chart = yaml.safe_load(open(os.path.join(ROOT, "charts/wsgiscale/Chart.yaml")))
    app_version = chart["appVersion"]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]

    # 1. The Kubernetes schemas, strict.
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
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
              or d["metadata"].get("namespace") in [NAMESPACE] + want.get("role_namespaces", []),
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
    else:
        check(not sms, "ServiceMonitor rendered although disabled")
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
