"""The networks: presets, loading from folders, the Hub or a checkpoint's role, input normalisation, and
`DudaModel`, the container of one run's students and teachers."""
