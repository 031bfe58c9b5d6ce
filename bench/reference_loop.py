"""The reference study's own way, in PyTorch: one Python process (a notebook) that loops over the
grid, training one student after another from a fresh initialisation, the teacher's forward pass
at every step, batches taken by index from tensors in memory, default Adam.

    python bench/reference_loop.py --teacher T/model.pt --alpha 0.2 0.5 --temperature 1 4 --epochs 2
    python bench/reference_loop.py --teacher-epochs 2 --scratch ...   # also train the teacher and a
                                                                      # student from scratch first

Same models, optimiser, batches per epoch and loss as kd-sweep; prints one JSON line with each
point's accuracy and the wall time of the whole loop (data loading included, interpreter and torch
start-up not: a notebook pays those once).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from kd import data as kd_data, models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--data-root")
    ap.add_argument("--teacher", help="the teacher's model.pt")
    ap.add_argument("--teacher-epochs", type=int, default=0, help="train the teacher here first, this many epochs")
    ap.add_argument("--scratch", action="store_true", help="train a student from scratch too")
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.5])
    ap.add_argument("--temperature", type=float, nargs="+", default=[4.0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if not args.teacher and not args.teacher_epochs:
        ap.error("give --teacher PATH or --teacher-epochs N")
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    d = kd_data.load(args.dataset, args.data_root)
    x_train, y_train = (d.train_x.float() / 255.0).to(dev), d.train_y.to(dev)
    x_test, y_test = (d.test_x.float() / 255.0).to(dev), d.test_y.to(dev)
    accuracy, teacher_images, batch = {}, 0, 256

    def train(model: torch.nn.Module, epochs: int, loss_of) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(y_train), device=dev)
            for i in range(0, len(order) - batch + 1, batch):  # the last partial batch dropped
                idx = order[i:i + batch]
                loss = loss_of(model, x_train[idx], y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                correct = sum((model(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum().item()
                              for i in range(0, len(y_test), 1000))
        return correct / len(y_test)

    def hard(model, x, y):
        return F.cross_entropy(model(x), y)

    torch.manual_seed(0)
    if args.teacher:
        saved = torch.load(args.teacher, map_location=dev, weights_only=True)
        teacher = models.build(saved["config"]["model"], 10, d.input_shape).to(dev)
        teacher.load_state_dict(saved["state_dict"])
    else:
        teacher = models.build("mnist-cnn", 10, d.input_shape).to(dev)
        accuracy["teacher"] = train(teacher, args.teacher_epochs, hard)
    teacher.eval()
    if args.scratch:
        torch.manual_seed(0)
        accuracy["scratch"] = train(models.build("mnist-mlp", 10, d.input_shape).to(dev), args.epochs, hard)
    t_kd = time.perf_counter()
    for alpha in args.alpha:
        for T in args.temperature:
            def distil(model, x, y, alpha=alpha, T=T):
                nonlocal teacher_images
                with torch.no_grad():
                    t_logits = teacher(x)
                teacher_images += len(x)
                logits = model(x)
                soft = -(F.softmax(t_logits / T, -1) * F.log_softmax(logits / T, -1)).sum(-1).mean() * T * T
                return alpha * soft + (1 - alpha) * F.cross_entropy(logits, y)

            torch.manual_seed(0)
            accuracy[f"alpha {alpha:g}, T {T:g}"] = train(models.build("mnist-mlp", 10, d.input_shape).to(dev),
                                                          args.epochs, distil)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()
    print(json.dumps({"seconds": end - t0, "kd_seconds": end - t_kd, "points": len(accuracy), "teacher_images": teacher_images,
                      "accuracy": accuracy}))


if __name__ == "__main__":
    main()
