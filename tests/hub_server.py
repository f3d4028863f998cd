"""A local stand-in for the Hugging Face Hub's upload API, for testing `push_to_hub` offline.

It answers the four calls `HfApi.upload_folder` makes (create the repo, validate the model card's YAML, ask how each
file is uploaded, commit) and writes every committed file under `<root>/<repo_id>/`: a local folder repo that
`from_pretrained` can then read. Every file is uploaded "regular" (inline in the commit), so no LFS/Xet storage is
involved. Point huggingface_hub at it with HF_ENDPOINT=<server.url>."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeHub(ThreadingHTTPServer):
    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.commits = Path(root), []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        if path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            return self._reply({"url": f"{self.server.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            return self._reply({"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
        if "/commit/" in path:
            repo_id = path.removeprefix("/api/models/").split("/commit/")[0]
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            for line in lines:
                if line["key"] == "file":
                    target = self.server.root / repo_id / line["value"]["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(line["value"]["content"]))
            self.server.commits.append(repo_id)
            oid = f"{len(self.server.commits):040x}"
            return self._reply({"success": True, "commitOid": oid, "commitUrl": f"{self.server.url}/{repo_id}/commit/{oid}"})
        self._reply({"error": f"not served here: {path}"}, 404)
