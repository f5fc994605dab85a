#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian/Ubuntu machine, then the suite itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 TF_CPP_MIN_LOG_LEVEL=3 DEBIAN_FRONTEND=noninteractive
# mosquitto: the MQTT sink is tested against a real broker on loopback;
# prometheus: Debian's server scrapes the bridge's metrics endpoint in a test.
missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v prometheus >/dev/null || missing+=(prometheus)
# systemd: `systemd-analyze verify` checks the bridge's unit template in a test
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python -m pip install --quiet -e ".[convert,test]"
# tf-keras writes the legacy Keras 2 HDF5 fixtures; --no-deps because it pins `tensorflow`
# (the same code as the tensorflow-cpu installed above).
python -m pip install --quiet --no-deps "tf-keras>=2.21,<2.22"
# PyTorch exports the ONNX fixtures of the PyTorch-import tests. Exactly 2.13.0: this machine
# image serves it as a local CPU wheel; an open range would resolve to a CUDA build of several GB.
python -m pip install --quiet "torch==2.13.0"
python -m pytest -q tests "$@"
