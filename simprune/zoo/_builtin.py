"""Import the built-in architecture modules so their ``@register_arch`` decorators run."""

from simprune.zoo import audio, cifar_mobilenet, cifar_resnet, cifar_vgg, libraries, torchvision_models  # noqa: F401
