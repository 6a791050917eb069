"""The step-for-step comparison of our training step with the authors' PyTorch code
(kampta/PatchVAE), and the PyTorch reference the speed benchmarks time ours against.
"""
