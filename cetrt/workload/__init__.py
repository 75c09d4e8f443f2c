"""What a run computes, shared by the runner, calib and ce-predict: HellaSwag documents, harness tokenization,
packing with a shared prefix, and the batch shapes."""
