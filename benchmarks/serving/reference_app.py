"""The reference pattern the serving benchmarks compare against (case d): FastAPI calling
the eager PyTorch model once per request — what the reference projects shipped.

Run by bench_serving.py and bench_text_serving.py: python reference_app.py --run RUN_ID
--port 8001 (with SHIPYARD_HOME pointing at the home that holds the run). Not part of
Shipyard. The run's task picks the app: an image model takes pixel arrays; a text
classifier (task=text) and a summariser (task=summarize) take texts,
``{"instances": ["text", ...]}``, tokenised by the run's Hugging Face tokenizer (the
training half's, as training did), and the summariser generates with Hugging Face
``generate`` (greedy unless the run's config says beams), with the run's settings.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from shipyard.config import compose
from shipyard.train.evaluate import RunModel, load_run_model


class Request(BaseModel):
    instances: list[list[list[list[float]]]]


class TextRequest(BaseModel):
    instances: list[str]


def build(run_id: str) -> FastAPI:
    loaded = load_run_model(compose([]), run_id)
    task = str(loaded.run_cfg.task.name)
    if task == "text":
        return with_ready(text_classifier(loaded))
    if task == "summarize":
        return with_ready(summarizer(loaded))
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

    return with_ready(app)


def text_classifier(loaded: RunModel) -> FastAPI:
    """Texts -> the training half's tokenizer (Hugging Face ``AutoTokenizer``) -> the eager
    classifier, per request."""
    model = loaded.model.eval()
    labels = loaded.schema["target"]["labels"]
    app = FastAPI()

    @app.post("/predict")
    def predict(request: TextRequest) -> dict[str, object]:
        ids = torch.as_tensor(loaded.half.encode(request.instances))  # type: ignore[attr-defined]
        with torch.no_grad():
            probabilities = torch.softmax(model(ids), dim=1).numpy()
        return {
            "predictions": [
                {"label": labels[int(row.argmax())], "probabilities": row.tolist()}
                for row in probabilities
            ]
        }

    return app


def summarizer(loaded: RunModel) -> FastAPI:
    """Documents -> the training half's tokenizer -> Hugging Face ``generate`` on the eager
    model (the run's beams, n-gram rule and ``max_target_length``, as the package decodes)
    -> the tokenizer's decode, per request."""
    from shipyard.tasks.summarize.training import generate_ids

    half: Any = loaded.half
    hf_model = loaded.model.model.eval()  # type: ignore[union-attr]
    app = FastAPI()

    @app.post("/predict")
    def predict(request: TextRequest) -> dict[str, object]:
        with torch.no_grad():
            ids = generate_ids(
                hf_model,
                half,
                request.instances,  # encoded by half.encode, as training did
                max_length=half.config.max_target_length,
                num_beams=half.num_beams,
                no_repeat_ngram_size=half.no_repeat_ngram_size,
            )
        return {"predictions": [{"summary": text} for text in half.decode(ids)]}

    return app


def with_ready(app: FastAPI) -> FastAPI:
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
