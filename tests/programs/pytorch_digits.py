"""A PyTorch teaching program, written the way PyTorch tutorials write them.

It is plain PyTorch: tests/test_from_torch.py runs it as it is under PyTorch
(where installed) and through ``minicnn from-torch`` (its import lines
rewritten, nothing else), and compares what the two print. The data come from
an ``.npz`` file (images uint8 (N, 28, 28), labels int) so that the program
needs neither torchvision nor a network.

    python pytorch_digits.py --data digits.npz --epochs 2
"""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset, random_split


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(16 * 5 * 5, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)       # (N, 8, 13, 13)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)       # (N, 16, 5, 5)
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def evaluate(model, device, loader):
    model.eval()
    correct, total, loss = 0, 0, 0.0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            outputs = model(images)
            loss += F.nll_loss(outputs, labels, reduction="sum").item()
            _, predicted = outputs.max(1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return loss / total, correct / total


def main():
    parser = argparse.ArgumentParser(description="digits, PyTorch style")
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    arrays = np.load(args.data)
    images = torch.from_numpy(arrays["images"].astype(np.float32) / 255.0).unsqueeze(1)
    images = (images - 0.1307) / 0.3081
    labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    dataset = TensorDataset(images, labels)
    n_test = len(dataset) // 5
    train_set, test_set = random_split(dataset, [len(dataset) - n_test, n_test])
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=256)
    print(f"train {len(train_set)} test {len(test_set)} batch {images[:2].size()} on {device}")

    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    classes = [str(i) for i in range(10)]
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch_idx, (x, y) in enumerate(train_loader):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.nll_loss(model(x), y)
            loss.backward()
            optimizer.step()
        scheduler.step()
        test_loss, accuracy = evaluate(model, device, test_loader)
        print(f"epoch {epoch}: last batch loss {float(loss.detach()):.4f}, test loss {test_loss:.4f}, "
              f"accuracy {accuracy:.4f}")
    x, y = next(iter(test_loader))
    guess = model(x.to(device)).argmax(dim=1)
    print("first test images:", " ".join(classes[y[j]] + "/" + classes[guess[j]] for j in range(4)))
    print(f"ACCURACY {accuracy:.4f}")


if __name__ == "__main__":
    main()
