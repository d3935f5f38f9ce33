"""The reference pattern the serving benchmark compares against (case d): FastAPI calling
the eager PyTorch model once per request — what the reference projects shipped.

Run by bench_serving.py: python reference_app.py --run RUN_ID --port 8001 (with
SHIPYARD_HOME pointing at the home that holds the run). Not part of Shipyard.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from shipyard.config import compose
from shipyard.train.evaluate import load_run_model


class Request(BaseModel):
    instances: list[list[list[list[float]]]]


def build(run_id: str) -> FastAPI:
    loaded = load_run_model(compose([]), run_id)
    model = loaded.model.eval()
    labels = loaded.schema["target"]["labels"]
    app = FastAPI()

    @app.post("/predict")
    def predict(request: Request) -> dict[str, object]:
        features = torch.as_tensor(np.asarray(request.instances, dtype=np.float32))
        with torch.no_grad():
            probabilities = torch.softmax(model(features), dim=1).numpy()
        return {
            "predictions": [
                {"label": labels[int(row.argmax())], "probabilities": row.tolist()}
                for row in probabilities
            ]
        }

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one request at a time per thread pool worker, as deployed
    uvicorn.run(build(args.run), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
