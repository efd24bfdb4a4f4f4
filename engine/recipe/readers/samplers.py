"""Other tools' sampler names, in AUTOMATIC1111's words (the names recipes use).

A name with no A1111 equivalent is kept as the tool wrote it, so the bot can say exactly
which sampler it does not have.
"""

from __future__ import annotations

#: ComfyUI's k-diffusion names (also SwarmUI's and Fooocus's).
COMFY = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_gpu": "DPM++ SDE",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "uni_pc_bh2": "UniPC",
    "lcm": "LCM",
    "tcd": "TCD",
}
COMFY_SCHEDULES = {"karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform"}

#: InvokeAI's scheduler names ("_k" = Karras sigmas).
INVOKEAI = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "euler_k": "Euler Karras",
    "heun": "Heun",
    "heun_k": "Heun Karras",
    "lms": "LMS",
    "lms_k": "LMS Karras",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_k": "DPM++ 2M Karras",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_k": "DPM++ 2M SDE Karras",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_k": "DPM++ SDE Karras",
    "kdpm_2": "DPM2",
    "kdpm_2_a": "DPM2 a",
    "ddim": "DDIM",
    "unipc": "UniPC",
    "unipc_k": "UniPC Karras",
    "lcm": "LCM",
}

#: The k-diffusion names of lstein's stable-diffusion fork and InvokeAI 1.x-2.x (``-A k_lms``;
#: ``SAMPLER_CHOICES`` in ``ldm/invoke/args.py``); InvokeAI 2.2+ also took the names above.
INVOKEAI_K = {
    "k_lms": "LMS",
    "k_euler": "Euler",
    "k_euler_a": "Euler a",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_a": "DPM2 a",
    "k_dpmpp_2": "DPM++ 2M",
    "k_dpmpp_2_a": "DPM++ 2S a",
    "ddim": "DDIM",
    "plms": "PLMS",
}

#: NovelAI's names.
NOVELAI = {
    "k_euler": "Euler",
    "k_euler_ancestral": "Euler a",
    "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_sde": "DPM++ SDE",
    "k_dpmpp_2s_ancestral": "DPM++ 2S a",
    "k_dpmpp_2m_sde": "DPM++ 2M SDE",
    "k_dpm_2": "DPM2",
    "k_dpm_2_ancestral": "DPM2 a",
    "k_lms": "LMS",
    "plms": "PLMS",
    "ddim": "DDIM",
    "ddim_v3": "DDIM",
}


def from_comfy(sampler: str, scheduler: str = "") -> str:
    """``("dpmpp_2m", "karras")`` -> ``"DPM++ 2M Karras"``."""
    name = COMFY.get(sampler.strip().lower(), sampler.strip())
    schedule = COMFY_SCHEDULES.get(scheduler.strip().lower())
    return f"{name} {schedule}" if schedule else name


def from_table(table: dict[str, str], sampler: str, schedule: str = "") -> str:
    name = table.get(sampler.strip().lower(), sampler.strip())
    if schedule.strip().lower() == "karras" and not name.endswith(" Karras"):
        name += " Karras"
    return name
