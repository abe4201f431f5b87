"""Coming from the Hugging Face Trainer: per-group LRs by naming the technique, no create_optimizer subclass."""

import tempfile

import torch
import transformers

from layerwise.integrations.huggingface import LayerwiseTrainer

torch.manual_seed(0)
config = transformers.BertConfig(
    vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=2
)
model = transformers.BertForSequenceClassification(config)  # your pretrained model here
data = [{"input_ids": torch.randint(1, 100, (8,)), "labels": i % 2} for i in range(16)]
args = transformers.TrainingArguments(
    output_dir=tempfile.mkdtemp(),
    max_steps=4,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    lr_scheduler_type="linear",
    logging_steps=1,
    report_to=[],
    save_strategy="no",
    use_cpu=True,
)
# ULMFiT's discriminative LRs: each layer 1/2.6 of the next, the head at args.learning_rate, times the linear decay
trainer = LayerwiseTrainer(
    model=model, args=args, train_dataset=data, technique="discriminative", technique_settings={"ratio": 2.6}
)
trainer.train()
first = trainer.state.log_history[0]
print({key: f"{value:.2e}" for key, value in first.items() if key.startswith("lr/")})  # every layer's LR, logged
