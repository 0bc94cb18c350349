"""`kubectl` for the simulated cluster: just the commands NOTES.txt prints.

The NOTES test runs the printed lines verbatim in a "workstation" network
namespace with this shim first on PATH as `kubectl`. It reads the cluster's
state from the JSON file in $PMK_CLUSTER_STATE (written by the test):

  kubectl --namespace NS rollout status deployment/NAME|statefulset/NAME
  kubectl --namespace NS port-forward svc/NAME LOCAL:REMOTE    (like kubectl:
      picks one ready pod behind the Service, listens on 127.0.0.1:LOCAL)
  kubectl --namespace NS get secret NAME -o jsonpath='{...}'   (evaluated
      by the real kubectl, offline)

Anything else fails loudly, so a NOTES line this cannot run is noticed.
"""

import asyncio
import json
import os
import subprocess
import sys


def fail(msg):
    print(f"kubectl (simulated): {msg}", file=sys.stderr)
    sys.exit(1)


def main(argv):
    state = json.load(open(os.environ["PMK_CLUSTER_STATE"]))
    ns = None
    args = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--namespace", "-n"):
            ns = argv[i + 1]
            i += 2
        else:
            args.append(argv[i])
            i += 1
    if ns != state["namespace"]:
        fail(f"namespace {ns!r}: the release is in {state['namespace']!r}")
    if args[:2] == ["rollout", "status"]:
        kind_name = args[2]
        if kind_name not in state["workloads"]:
            fail(f"{kind_name} not found")
        ready, want = state["workloads"][kind_name]
        if ready < want:
            fail(f"{kind_name}: {ready} of {want} pods ready")
        print(f'{kind_name.split("/")[0]} "{kind_name.split("/")[1]}" successfully rolled out')
        return
    if args[0] == "port-forward":
        target, ports = args[1], args[2]
        if not target.startswith("svc/"):
            fail(f"only svc/NAME is simulated, got {target}")
        svc = state["services"].get(target[4:])
        if svc is None:
            fail(f"service {target[4:]} not found")
        local, remote = ports.split(":")
        if remote not in svc["ports"]:
            fail(f"service {target[4:]} has no port {remote}")
        pod_ip, pod_port = svc["ports"][remote]
        print(f"Forwarding from 127.0.0.1:{local} -> {pod_port}", flush=True)
        asyncio.run(forward(int(local), pod_ip, pod_port))
        return
    if args[:2] == ["get", "secret"]:
        name = args[2]
        secret = state["secrets"].get(name)
        if secret is None:
            fail(f'secrets "{name}" not found')
        out = [a for a in args[3:] if a.startswith("jsonpath=")] or [args[args.index("-o") + 1]]
        literals = [f"--from-literal={k}={v}" for k, v in secret.items()]
        proc = subprocess.run([state["kubectl"], "create", "secret", "generic", name, "--dry-run=client", *literals,
                               "-o", out[0]], capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        sys.exit(proc.returncode)
    fail(f"not simulated: kubectl {' '.join(argv)}")


async def forward(local_port, host, port):
    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError as e:
            print(f"error forwarding to {host}:{port}: {e}", file=sys.stderr, flush=True)
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", local_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
