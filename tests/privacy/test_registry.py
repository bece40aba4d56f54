"""privacy.attacks: the registry resolves names and rejects unknown ones clearly."""
import pytest

from privacy import attacks


def test_register_get_and_unknown_name():
  @attacks.register("test_identity")
  def identity(shared_grads, model, meta, key):
    del model, meta, key
    return shared_grads

  assert attacks.get("test_identity") is identity
  assert "test_identity" in attacks.names()
  with pytest.raises(ValueError,
                     match="unknown attack 'nope'; registered attacks: .*test_identity"):
    attacks.get("nope")
  with pytest.raises(ValueError, match="registered twice"):
    attacks.register("test_identity")(lambda *a: None)
