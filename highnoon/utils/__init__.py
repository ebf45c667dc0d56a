"""Small helpers shared by every subpackage (no TensorFlow import at module level)."""
