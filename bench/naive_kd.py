"""The naive way, as a user would write it without kd-sweep: one process per grid point, a
torch DataLoader over the dataset, and the teacher's forward pass at every training step.

    python bench/naive_kd.py --dataset mnist-5k --method kd --teacher T/model.pt --alpha 0.5 --temperature 4

Same models, optimiser, batches per epoch and loss as kd-sweep; prints one JSON line with its
accuracy, wall time and how many images went through the teacher. (Reading the images from
a uint8 tensor per sample is kinder than torchvision's MNIST + ToTensor, which decodes a PIL
image per sample: this baseline is, if anything, fast.)
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from kd import data as kd_data, models


class Images(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i].float() / 255.0, self.y[i]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--data-root")
    ap.add_argument("--method", default="kd", choices=["teacher", "scratch", "kd"])
    ap.add_argument("--teacher")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    d = kd_data.load(args.dataset, args.data_root)
    train = DataLoader(Images(d.train_x, d.train_y), batch_size=256, shuffle=True, drop_last=True,
                       num_workers=args.workers, pin_memory=dev.type == "cuda")
    test = DataLoader(Images(d.test_x, d.test_y), batch_size=1000, num_workers=args.workers)
    torch.manual_seed(0)
    model = models.build("mnist-cnn" if args.method == "teacher" else "mnist-mlp", 10, d.input_shape).to(dev)
    teacher = None
    if args.method == "kd":
        saved = torch.load(args.teacher, map_location=dev, weights_only=True)
        teacher = models.build(saved["config"]["model"], 10, d.input_shape).to(dev)
        teacher.load_state_dict(saved["state_dict"])
        teacher.eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    teacher_images, T = 0, args.temperature
    for _ in range(args.epochs):
        model.train()
        for x, y in train:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                teacher_images += len(x)
                soft = -(F.softmax(t_logits / T, -1) * F.log_softmax(logits / T, -1)).sum(-1).mean() * T * T
                loss = args.alpha * soft + (1 - args.alpha) * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test:
                correct += (model(x.to(dev)).argmax(1) == y.to(dev)).sum().item()
    print(json.dumps({"test_accuracy": correct / len(d.test_y), "seconds": time.perf_counter() - t0,
                      "teacher_images": teacher_images}))


if __name__ == "__main__":
    main()
