"""What leaves a run: a network as a plain transformers folder (`network`), its model card (`model_card`), ONNX
(`onnx_export`) and the Hub (`hub`)."""
