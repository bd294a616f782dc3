# Thin by design: the model lives in the t2vserve library (t2vserve/serve/triton_models.py).
from t2vserve.serve.triton_models import T2VStreamModel as TritonPythonModel  # noqa: F401
