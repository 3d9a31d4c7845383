"""Builds the optional window-JPEG-decode extension (vit_jax/data/_jpegcrop.c); everything else is in pyproject.toml.

It needs libjpeg-turbo's headers (Debian: libjpeg62-turbo-dev). Without them the build skips the extension
(`optional=True`) and the training crop decodes whole JPEGs with simplejpeg instead.
"""
import setuptools

setuptools.setup(ext_modules=[
    setuptools.Extension('vit_jax.data._jpegcrop', ['vit_jax/data/_jpegcrop.c'], libraries=['jpeg'],
                         extra_compile_args=['-O2'], optional=True),
])
