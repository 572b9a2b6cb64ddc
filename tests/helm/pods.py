"""Playing the kubelet's part for the chart's pod test: a rendered pod spec → `podman run`.

Kept small and explicit. What is honoured, field by field:

- ``args`` (and ``command``): ``command`` replaces the image's entrypoint, ``args`` its CMD, as
  in Kubernetes; ``$(VAR)`` references are expanded from the container's environment, ``$$``
  escapes a dollar.
- ``env``: ``value`` (with ``$(VAR)`` expansion from the variables before it), ``valueFrom``
  ``fieldRef`` (``spec.nodeName``, ``status.hostIP``, ``status.podIP``, ``metadata.name``,
  ``metadata.namespace``, ``metadata.labels['…']``), ``configMapKeyRef``, ``secretKeyRef``;
  ``envFrom`` ``configMapRef`` / ``secretRef``, with ``env`` winning over it.
- ``securityContext`` (container over pod): ``runAsUser`` / ``runAsGroup`` → ``--user``,
  ``runAsNonRoot`` (refused when the uid is 0 or unknown, as the kubelet does), ``fsGroup`` →
  ``--group-add``, ``readOnlyRootFilesystem`` → ``--read-only`` without podman's own tmpfs
  mounts, ``capabilities`` drop / add, ``allowPrivilegeEscalation: false`` →
  ``no-new-privileges``, ``privileged`` (must be false), ``seccompProfile: RuntimeDefault`` →
  podman's default profile.
- ``volumes``: ``emptyDir`` → an empty directory of mode 0777 owned by group ``fsGroup``, as
  the kubelet makes it (its ``sizeLimit``, enforced by eviction, is not); ``configMap`` /
  ``secret`` → their files (``items`` honoured), mounted read-only; a StatefulSet's
  ``volumeClaimTemplates`` → a directory of group ``fsGroup``, mode 2775, as a provisioned
  volume after the kubelet applied fsGroup (it lives as long as the test).
- ``resources.limits.memory`` → ``--memory``.
- Each Service's name → a network alias of the containers its selector matches, provided the
  Service's port is the container port (no kube-proxy to remap ports here).

Not honoured (no Kubernetes here) and said so by the test: NetworkPolicy, scheduling
(tolerations, affinity, nodeSelector), PodDisruptionBudget, the Deployments' rollout strategy,
probes run periodically (the test runs each exec probe itself), CPU limits, ServiceAccounts,
``hostNetwork`` (each "node" is its own container, so its hostIP is its podIP), persistence.
"""
from __future__ import annotations

import base64
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_LABEL_REF = re.compile(r"^metadata\.labels\['([^']+)'\]$")
_MEMORY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}


class Unsupported(ValueError):
    """The spec asks for something this translation cannot honour: the test must not pretend."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are replaced, unknown references stay as
    written, $$ is a literal $."""
    def repl(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _REF.sub(repl, text)


def memory_bytes(quantity: str) -> int:
    for suffix, scale in _MEMORY.items():
        if str(quantity).endswith(suffix):
            return int(float(str(quantity)[: -len(suffix)]) * scale)
    return int(quantity)


@dataclass
class Pod:
    """One pod to run: its name, the "node" it runs on, its addresses and labels."""

    name: str
    spec: dict[str, Any]
    labels: dict[str, str]
    node: str
    ip: str
    namespace: str
    claims: list[str] = field(default_factory=list)   # volumeClaimTemplates' names

    @classmethod
    def from_object(cls, obj: dict[str, Any], *, name: str, node: str, ip: str,
                    extra_labels: dict[str, str] | None = None) -> "Pod":
        if obj["kind"] == "Pod":
            spec, labels = obj["spec"], dict(obj["metadata"].get("labels", {}))
        else:
            template = obj["spec"]["template"]
            spec, labels = template["spec"], dict(template["metadata"].get("labels", {}))
        labels.update(extra_labels or {})
        claims = [c["metadata"]["name"] for c in obj["spec"].get("volumeClaimTemplates", [])]
        return cls(name=name, spec=spec, labels=labels, node=node, ip=ip,
                   namespace=obj["metadata"]["namespace"], claims=claims)


class Cluster:
    """The rendered objects a kubelet would look up: ConfigMaps, Secrets, Services."""

    def __init__(self, objects: list[dict[str, Any]], workdir: Path):
        self.config_maps = {o["metadata"]["name"]: dict(o.get("data") or {})
                            for o in objects if o["kind"] == "ConfigMap"}
        self.secrets = {o["metadata"]["name"]: {k: base64.b64decode(v).decode()
                                                for k, v in (o.get("data") or {}).items()}
                        for o in objects if o["kind"] == "Secret"}
        self.services = [o for o in objects if o["kind"] == "Service"]
        self.workdir = workdir

    # -- environment --

    def _field(self, pod: Pod, path: str) -> str:
        simple = {"spec.nodeName": pod.node, "status.hostIP": pod.ip, "status.podIP": pod.ip,
                  "metadata.name": pod.name, "metadata.namespace": pod.namespace}
        if path in simple:
            return simple[path]
        label = _LABEL_REF.match(path)
        if label:
            return pod.labels.get(label.group(1), "")
        raise Unsupported(f"fieldRef {path}")

    def _key_ref(self, store: dict[str, dict[str, str]], ref: dict[str, Any], what: str) -> str:
        try:
            return store[ref["name"]][ref["key"]]
        except KeyError:
            raise Unsupported(f"{what} {ref['name']}/{ref['key']} is not in the rendered "
                              "objects") from None

    def environment(self, pod: Pod, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.config_maps[source["configMapRef"]["name"]])
            elif "secretRef" in source:
                env.update(self.secrets[source["secretRef"]["name"]])
            else:
                raise Unsupported(f"envFrom {source}")
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(str(var["value"]), env)
                continue
            source = var["valueFrom"]
            if "fieldRef" in source:
                env[var["name"]] = self._field(pod, source["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in source:
                env[var["name"]] = self._key_ref(self.config_maps, source["configMapKeyRef"],
                                                 "ConfigMap key")
            elif "secretKeyRef" in source:
                env[var["name"]] = self._key_ref(self.secrets, source["secretKeyRef"],
                                                 "Secret key")
            else:
                raise Unsupported(f"valueFrom {source}")
        return env

    # -- volumes --

    def _files(self, pod: Pod, volume: dict[str, Any], data: dict[str, str]) -> Path:
        items = volume.get("items") or [{"key": k, "path": k} for k in data]
        directory = Path(tempfile.mkdtemp(prefix=f"{pod.name}-{volume['name']}-",
                                          dir=self.workdir))
        for item in items:
            target = directory / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
            target.chmod(0o644)
        directory.chmod(0o755)
        return directory

    def _node_dir(self, pod: Pod, name: str, mode: int) -> Path:
        directory = Path(tempfile.mkdtemp(prefix=f"{pod.name}-{name}-", dir=self.workdir))
        fs_group = pod.spec.get("securityContext", {}).get("fsGroup")
        if fs_group is not None:
            os.chown(directory, 0, fs_group)
        directory.chmod(mode)
        return directory

    def _mounts(self, pod: Pod, container: dict[str, Any]) -> list[str]:
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        options = []
        for mount in container.get("volumeMounts", []):
            name, path = mount["name"], mount["mountPath"]
            volume = volumes.get(name)
            if volume is None and name in pod.claims:
                # A claim template: a directory of the "node", as a provisioner's volume.
                options += ["-v", f"{self._node_dir(pod, name, 0o2775)}:{path}"]
                continue
            if volume is None:
                raise Unsupported(f"volume {name} is neither in the pod nor a claim template")
            if "emptyDir" in volume:
                # As the kubelet makes one: an empty directory of mode 0777, group fsGroup.
                # (Not a podman tmpfs: podman gives it the image directory's owner and mode.)
                options += ["-v", f"{self._node_dir(pod, name, 0o2777)}:{path}"]
            elif "configMap" in volume:
                files = self._files(pod, volume["configMap"] | {"name": name},
                                    self.config_maps[volume["configMap"]["name"]])
                options += ["-v", f"{files}:{path}:ro"]
            elif "secret" in volume:
                files = self._files(pod, volume["secret"] | {"name": name},
                                    self.secrets[volume["secret"]["secretName"]])
                options += ["-v", f"{files}:{path}:ro"]
            else:
                raise Unsupported(f"volume {name}: {sorted(volume)}")
        return options

    # -- security --

    @staticmethod
    def _security(pod: Pod, container: dict[str, Any]) -> list[str]:
        pod_sc = pod.spec.get("securityContext", {})
        sc = {**pod_sc, **container.get("securityContext", {})}
        if sc.get("privileged"):
            raise Unsupported("privileged containers")
        options = []
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        if sc.get("runAsNonRoot") and not uid:
            # The kubelet refuses to start such a container unless the image's user is
            # numeric and non-zero; every non-root pod of this chart names its uid.
            raise Unsupported("runAsNonRoot without a runAsUser")
        if uid is not None:
            options += ["--user", f"{uid}:{gid if gid is not None else uid}"]
        if pod_sc.get("fsGroup") is not None:
            options += ["--group-add", str(pod_sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            # Without --read-only-tmpfs=false podman would add writable /tmp, /run, /var/tmp.
            options += ["--read-only", "--read-only-tmpfs=false"]
        caps = sc.get("capabilities", {})
        options += [f"--cap-drop={c}" for c in caps.get("drop", [])]
        options += [f"--cap-add={c}" for c in caps.get("add", [])]
        if sc.get("allowPrivilegeEscalation") is False:
            options += ["--security-opt", "no-new-privileges"]
        profile = sc.get("seccompProfile", {}).get("type")
        if profile not in ("RuntimeDefault", None):
            raise Unsupported(f"seccompProfile {profile}")  # RuntimeDefault: podman's default
        return options

    # -- the whole container --

    def aliases(self, pod: Pod) -> list[str]:
        """Names of the Services whose selector matches this pod."""
        names = []
        for service in self.services:
            selector = service["spec"].get("selector", {})
            if selector and all(pod.labels.get(k) == v for k, v in selector.items()):
                names.append(service["metadata"]["name"])
        return names

    def check_service_ports(self, pod: Pod, container: dict[str, Any]) -> None:
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        for service in self.services:
            if service["metadata"]["name"] not in self.aliases(pod):
                continue
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                target = ports.get(target, target)
                if target != port["port"]:
                    raise Unsupported(f"Service {service['metadata']['name']} maps port "
                                      f"{port['port']} to {target}: no kube-proxy here")

    def run_options(self, pod: Pod, container: dict[str, Any], network: str
                    ) -> tuple[list[str], list[str], dict[str, str]]:
        """(podman run options, the command after the image, the environment)."""
        env = self.environment(pod, container)
        self.check_service_ports(pod, container)
        network_spec = f"{network}:ip={pod.ip}"
        for alias in self.aliases(pod):
            network_spec += f",alias={alias}"
        options = ["--hostname", pod.node if pod.spec.get("hostNetwork") else pod.name,
                   "--network", network_spec]
        options += self._security(pod, container)
        options += self._mounts(pod, container)
        memory = container.get("resources", {}).get("limits", {}).get("memory")
        if memory:
            options += ["--memory", str(memory_bytes(memory))]
        if "command" in container:
            options += ["--entrypoint", _json_list([expand(a, env) for a in
                                                    container["command"]])]
        argv = [expand(str(a), env) for a in container.get("args", [])]
        return options, argv, env


def _json_list(items: list[str]) -> str:
    import json

    return json.dumps(items)
