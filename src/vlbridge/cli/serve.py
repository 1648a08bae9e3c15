"""`vlbridge serve`: the OpenAI-compatible server (chat completions, streaming, continuous batching, API keys and
modality permissions, request limits, a web chat page) on uvicorn; needs the `serve` extra."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import vlbridge
from vlbridge.errors import ConfigError

VIDEO_FLAGS = {
    "max_videos": "videos per request",
    "max_video_bytes": "largest video data URL accepted (bytes)",
    "max_video_frames": "most frames a request may have a video sampled to",
    "video_fps": "video frames sampled per second unless the request says (video_fps)",
    "video_max_frames": "frames per video unless the request says (video_max_frames)",
}
"""The server's video limits and sampling (`Limits` fields), each a --flag of the same name."""


def add_parser(sub: Any) -> None:
    """Register the subcommand with every limit as a flag (defaults from vlbridge.serve.limits.Limits)."""
    from vlbridge.serve.limits import Limits

    limits = Limits()
    parser = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API with a web chat page")
    parser.add_argument("--model", default=None, help="checkpoint dir (default: the embedded model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--api-keys", default=None, help='JSON file {"keys": [{"key", "name", "modalities"}]}')
    parser.add_argument("--text-only", action="store_true", help="load no vision weights; image requests get 403")
    parser.add_argument("--max-batch", type=int, default=16, help="requests decoded together (KV cache rows)")
    parser.add_argument("--max-context", type=int, default=None, help="tokens per request (default: the model's)")
    parser.add_argument("--allowed-media-path", default=None, help="folder file:// image/video URLs may be read from")
    parser.add_argument(
        "--max-body-bytes", type=int, default=limits.max_body_bytes, help="largest request body accepted (413 above)"
    )
    parser.add_argument(
        "--max-image-bytes", type=int, default=limits.max_image_bytes, help="largest decoded image file accepted"
    )
    parser.add_argument(
        "--max-image-pixels", type=int, default=limits.max_image_pixels, help="most pixels an image may declare"
    )
    parser.add_argument("--max-images", type=int, default=limits.max_images, help="images per request")
    for name, help_text in VIDEO_FLAGS.items():
        default = getattr(limits, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default, help=help_text)
    parser.add_argument("--max-queue", type=int, default=limits.max_queue, help="waiting requests; more get 503")
    parser.add_argument("--timeout", type=float, default=limits.timeout_s, help="seconds per request")
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=limits.default_max_tokens,
        help="new tokens when a request sets no max_tokens",
    )
    parser.set_defaults(run=run)


def build_state(args: argparse.Namespace) -> Any:
    """Load the model, start its engine, and gather the server's settings (the app is built over them)."""
    from vlbridge.serve.app import ServerState
    from vlbridge.serve.auth import KeyStore
    from vlbridge.serve.engine import Engine
    from vlbridge.serve.limits import Limits

    counts = (args.max_batch, args.max_images, args.max_videos, args.max_queue, args.max_video_frames)
    if min(*counts, args.max_body_bytes, args.max_image_bytes, args.max_video_bytes, args.video_max_frames) < 1:
        raise ConfigError("--max-batch, the --max-* counts, the byte limits and --video-max-frames must be at least 1")
    if args.video_max_frames > args.max_video_frames:
        raise ConfigError(
            f"--video-max-frames {args.video_max_frames} is over --max-video-frames {args.max_video_frames}"
        )
    if not 0 < args.video_fps <= 60:
        raise ConfigError(f"--video-fps must be above 0 and at most 60 frames per second, got {args.video_fps}")
    keys = KeyStore.from_file(args.api_keys) if args.api_keys else None
    media = Path(args.allowed_media_path) if args.allowed_media_path else None
    if media is not None and not media.is_dir():
        raise ConfigError(f"--allowed-media-path {media} is not a folder")
    model, _ = vlbridge.load(args.model, vision=not args.text_only)
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        max_images=args.max_images,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        default_max_tokens=args.default_max_tokens,
        **{name: getattr(args, name) for name in VIDEO_FLAGS},
    )
    engine = Engine(model, max_batch=args.max_batch, max_length=args.max_context, max_queue=args.max_queue)
    name = Path(args.model).name if args.model else "vlbridge-default"
    return ServerState(engine.start(), name, limits, keys, media)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C: uvicorn then stops accepting, lets running requests finish, the engine drains,
    and uvicorn ends the process by the signal it caught (exit status -15 for SIGTERM)."""
    try:
        import uvicorn
    except ImportError as err:
        raise ConfigError('vlbridge serve needs the serve extra: pip install "vlbridge[serve]"') from err
    from vlbridge.serve.app import create_app

    state = build_state(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        uvicorn.run(create_app(state), host=args.host, port=args.port, access_log=False, timeout_graceful_shutdown=60)
    finally:
        state.engine.stop()  # when uvicorn never started; after a shutdown the app's lifespan has stopped it
    return 0
