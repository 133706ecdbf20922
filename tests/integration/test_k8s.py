#!/usr/bin/env python3
"""deploy/k8s/, validated offline: every manifest against the Kubernetes
OpenAPI schemas (tests/k8s/validate.mjs, npm package kubernetes-models, with
unknown fields rejected), which must also reject a broken copy; yamllint;
and the structure this service needs: native gRPC probes on the container's
port (readiness by service name, so a drain takes the pod out), resources
that follow NUM_WORKERS, a headless Service selecting the pods, a grace
period above --grace, and a ConfigMap config that the real server accepts."""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import unittest

import yaml

import harness as h

K8S = os.path.join(h.SOURCE_DIR, "deploy", "k8s")
VALIDATOR = os.path.join(h.SOURCE_DIR, "tests", "k8s")
MANIFESTS = sorted(glob.glob(os.path.join(K8S, "*.yaml")))
MI = 1 << 20


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def docs():
    out = {}
    for f in MANIFESTS:
        for d in yaml.safe_load_all(read(f)):
            out[d["kind"]] = d
    return out


def quantity(q):
    """Kubernetes quantity -> bytes or cores (the forms we use)."""
    q = str(q)
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "m": 1e-3}
    for u, mult in units.items():
        if q.endswith(u):
            return float(q[:-len(u)]) * mult
    return float(q)


class Manifests(unittest.TestCase):
    def setUp(self):
        self.d = docs()
        self.dep = self.d["Deployment"]
        self.pod = self.dep["spec"]["template"]
        self.c = self.pod["spec"]["containers"][0]

    def test_grpc_probes(self):
        port = next(p["containerPort"] for p in self.c["ports"] if p["name"] == "grpc")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            self.assertEqual(self.c[probe]["grpc"]["port"], port, probe)
        self.assertEqual(self.c["readinessProbe"]["grpc"]["service"], "thumbnail.v1.Thumbnailer")

    def test_resources_follow_workers(self):
        env = {e["name"]: e["value"] for e in self.c["env"]}
        workers = int(env["NUM_WORKERS"])
        conf = self.d["ConfigMap"]["data"]["thumbnail_server.conf"]
        self.assertNotRegex(conf, r"(?m)^\s*workers\s*=", "workers in the file would beat the env")
        wm = re.search(r"(?m)^\s*worker-memory\s*=\s*(\d+)G", conf)
        worker_mem = int(wm.group(1)) << 30
        res = self.c["resources"]
        self.assertEqual(quantity(res["requests"]["cpu"]), workers)
        self.assertEqual(quantity(res["requests"]["memory"]), workers * 256 * MI + 256 * MI)
        self.assertEqual(quantity(res["limits"]["memory"]), workers * worker_mem + 512 * MI)
        self.assertNotIn("cpu", res["limits"], "a CPU limit throttles decodes for nothing")

    def test_headless_service_selects_the_pods(self):
        svc = self.d["Service"]
        self.assertEqual(svc["spec"]["clusterIP"], "None")
        labels = self.pod["metadata"]["labels"]
        for k, v in svc["spec"]["selector"].items():
            self.assertEqual(labels.get(k), v)
        for k, v in self.dep["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(labels.get(k), v)
        self.assertEqual(svc["spec"]["ports"][0]["targetPort"], "grpc")
        self.assertEqual(svc["spec"]["ports"][0]["port"], 50051)
        pdb = self.d["PodDisruptionBudget"]
        self.assertEqual(pdb["spec"]["selector"], self.dep["spec"]["selector"])

    def test_drain_fits_grace_period(self):
        conf = self.d["ConfigMap"]["data"]["thumbnail_server.conf"]
        grace = float(re.search(r"(?m)^grace\s*=\s*(\d+)s", conf).group(1))
        self.assertGreaterEqual(self.pod["spec"]["terminationGracePeriodSeconds"], grace + 5)
        self.assertIn("kill -QUIT 1", " ".join(self.c["lifecycle"]["preStop"]["exec"]["command"]))

    def test_config_is_mounted_where_the_command_reads_it(self):
        cmd = self.c["command"]
        path = cmd[cmd.index("--config") + 1]
        mount = next(m for m in self.c["volumeMounts"] if m["name"] == "config")
        self.assertEqual(os.path.join(mount["mountPath"], "thumbnail_server.conf"), path)
        vol = next(v for v in self.pod["spec"]["volumes"] if v["name"] == "config")
        self.assertEqual(vol["configMap"]["name"], self.d["ConfigMap"]["metadata"]["name"])
        kust = yaml.safe_load(read(os.path.join(K8S, "kustomization.yaml")))
        self.assertEqual(sorted(kust["resources"]),
                         sorted(os.path.basename(m) for m in MANIFESTS
                                if not m.endswith("kustomization.yaml")))

    def test_configmap_config_runs_the_real_server(self):
        """The ConfigMap's file, given to the real server (only the spool dir and the
        address overridden: those are the pod's), starts and serves."""
        conf_text = self.d["ConfigMap"]["data"]["thumbnail_server.conf"]
        srv = h.Server(workers=1, start=False)
        self.addCleanup(srv.cleanup)
        conf = os.path.join(srv.tmp, "thumbnail_server.conf")
        with open(conf, "w") as f:
            f.write(conf_text)
        srv.extra = ["--config", conf]  # the harness's --listen/--spool-dir come first...
        srv.start()  # ...and the config file sits below every flag anyway
        self.assertEqual(h.health_check(srv.addr), "SERVING")
        self.assertEqual(srv.stop(), 0)

    @unittest.skipUnless(shutil.which("yamllint"), "yamllint not installed")
    def test_yamllint(self):
        r = subprocess.run(["yamllint", "-d", "{extends: default, rules: {line-length: "
                            "{max: 120}, document-start: disable}}"] + MANIFESTS,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(r.returncode, 0, r.stdout)


@unittest.skipUnless(shutil.which("node") and shutil.which("npm"), "node/npm not installed")
class Schema(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        """npm ci into the build tree (once per package-lock.json)."""
        cls.dir = os.path.join(h.BUILD_DIR, "k8s-validate")
        lock = read(os.path.join(VALIDATOR, "package-lock.json"), "rb")
        stamp = os.path.join(cls.dir, ".lock-sha256")
        want = hashlib.sha256(lock).hexdigest()
        if not (os.path.exists(stamp) and read(stamp) == want):
            shutil.rmtree(cls.dir, ignore_errors=True)
            os.makedirs(cls.dir)
            for f in ("package.json", "package-lock.json"):
                shutil.copy(os.path.join(VALIDATOR, f), cls.dir)
            r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=cls.dir,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=240)
            if r.returncode != 0:
                raise AssertionError("npm ci failed:\n" + r.stdout)
            with open(stamp, "w") as f:
                f.write(want)
        shutil.copy(os.path.join(VALIDATOR, "validate.mjs"), cls.dir)

    def validate(self, files):
        return subprocess.run(["node", os.path.join(self.dir, "validate.mjs")] + files,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=60)

    def test_manifests_valid(self):
        r = self.validate(MANIFESTS)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("%d documents checked, 0 invalid" % len(MANIFESTS), r.stdout)

    def test_validator_rejects_broken_manifests(self):
        d = h.tempfile.mkdtemp(prefix="tn-k8s-")
        self.addCleanup(shutil.rmtree, d, True)
        text = read(os.path.join(K8S, "deployment.yaml"))
        breaks = {
            "typo.yaml": (r"readinessProbe:", "readinessProbes:", "unknown field "
                          "/spec/template/spec/containers/0/readinessProbes"),
            "type.yaml": (r"containerPort: 50051", "containerPort: grpc",
                          "/spec/template/spec/containers/0/ports/0/containerPort: type"),
            "missing.yaml": (r"      containers:\n        - name: thumbnail-server\n",
                             "      containers:\n        - \n", "required"),
        }
        for name, (old, new, want) in breaks.items():
            bad, n = re.subn(old, new, text, count=1)
            self.assertEqual(n, 1, old)
            path = os.path.join(d, name)
            with open(path, "w") as f:
                f.write(bad)
            r = self.validate([path])
            self.assertEqual(r.returncode, 1, name + ":\n" + r.stdout)
            self.assertIn(want, r.stdout, name)


if __name__ == "__main__":
    h.main()
