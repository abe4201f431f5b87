"""Coming from Lightning: gradual unfreezing as a callback; a resumed run keeps what was unfrozen."""

import logging
import tempfile
from pathlib import Path

import lightning
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import layerwise
from layerwise.integrations.lightning import LayerwiseCallback

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


class Classifier(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # your pretrained model here
        self.net = nn.Sequential(
            nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        part = layerwise.by_layer(self.net, sample_input=torch.zeros(2, 4))  # groups '0', '1' (the norm), '3', '5'
        return torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)


def unfreezing(module, optimizer):  # the head trains first; one more group every 2 steps, towards the input
    return layerwise.GradualUnfreezing(layerwise.Freezer(module.net, optimizer), every=2)


def fit(epochs, ckpt_path=None):
    trainer = lightning.Trainer(
        max_epochs=epochs,
        callbacks=[LayerwiseCallback(unfreezing)],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(Classifier(), loader, ckpt_path=ckpt_path)
    return trainer


x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)  # 4 steps an epoch
checkpoint = Path(tempfile.mkdtemp()) / "half.ckpt"
whole = fit(epochs=2)
half = fit(epochs=1)
half.save_checkpoint(checkpoint)  # after step 4: '3' and the norm unfrozen, '0' still frozen
resumed = fit(epochs=2, ckpt_path=checkpoint)
same = all(
    torch.equal(a, b) for a, b in zip(whole.lightning_module.parameters(), resumed.lightning_module.parameters())
)
print("frozen at the checkpoint:", half.callbacks[0].technique.freezer.frozen, "| resumed = uninterrupted:", same)
