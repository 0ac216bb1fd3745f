"""deploy/compose: the FreeSWITCH service, its configuration as FreeSWITCH reads it, and its wiring to
gateway-fs. There is no Docker engine here: files are checked statically, the configuration goes
through an emulation of FreeSWITCH's XML pre-processor (switch_xml.c), the image's shell scripts run
under sh, and robot.lua runs under a Lua interpreter with stub session/freeswitch objects."""

from __future__ import annotations

import glob
import ipaddress
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from voiceplatform.bus import natsconf, permissions
from voiceplatform.phone_stream import stream_url

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
FS_DIR = COMPOSE_DIR / "freeswitch"
CONF = FS_DIR / "conf"
SCHEMA = Path(__file__).with_name("compose-spec.json")
PASSWORD = "s3cret-esl-pass"
STREAM_SECRET = "stream-key-of-the-deploy-tests"
FS_GLOBALS = {"local_ip_v4": "172.31.197.5", "script_dir": "/usr/local/freeswitch/scripts"}
DIRECTIVE = re.compile(r'<X-PRE-PROCESS cmd="(?P<cmd>[^"]*)" data="(?P<data>[^"]*)"/>', re.IGNORECASE)
MODULES = {"mod_event_socket", "mod_sofia", "mod_dptools", "mod_commands", "mod_sndfile"}
MODULES |= {"mod_native_file", "mod_lua", "mod_audio_stream", "mod_dialplan_xml", "mod_console"}

# ---- emulations of what reads these files: docker compose's interpolation, FreeSWITCH's pre-processor


# compose also requires a password per NATS user (deploy/compose/nats.conf)
NATS_PASSWORDS = {natsconf.password_env(user): f"nats{i}" for i, user in enumerate(permissions.USERS)} | {
    name: f"store{i}" for i, name in enumerate(natsconf.STORE_PASSWORD_ENVS)
}


class InterpolationError(Exception):
    pass


_COMPOSE_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_]\w*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """The Compose specification's interpolation: $$, ${X}, ${X:-d}, ${X-d}, ${X:?e}, ${X?e}."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op = match["braced"] or match["named"], match["op"] or ""
        current = env.get(name)
        missing = not current if op.startswith(":") else current is None
        if op.endswith("-"):
            return match["arg"] if missing else str(current)
        if op.endswith("?") and missing:
            raise InterpolationError(f"{name}: {match['arg']}")
        return current or ""

    return _COMPOSE_VAR.sub(substitute, value)


def preprocess(env: dict[str, str]) -> tuple[ET.Element, dict[str, str]]:
    """conf/freeswitch.xml as FreeSWITCH expands it (set, env-set, include, $${var}); the document and
    the globals it ends with."""
    variables = dict(FS_GLOBALS)
    out: list[str] = []

    def expand(line: str) -> str:
        return re.sub(r"\$\$\{(\w+)\}", lambda m: variables.get(m[1], ""), line)

    def run(path: Path) -> None:
        for raw in path.read_text().splitlines(keepends=True):
            line = expand(raw)
            if "<include>" in raw or "</include>" in raw or "<?" in raw:
                continue
            at = line.lower().find("x-pre-process")
            if at < 0:
                out.append(line)
                continue
            match = DIRECTIVE.search(line)
            if at == 0 or line[at - 1] != "<" or match is None:
                continue  # FreeSWITCH drops the line
            name, _, value = match["data"].partition("=")
            if match["cmd"] == "set":
                variables[name.strip()] = value.strip()
            elif match["cmd"] == "env-set":
                if value.startswith("$") and value[1:] in env:
                    variables[name] = env[value[1:]]
            elif match["cmd"] == "include":
                for included in sorted(glob.glob(str(path.parent / match["data"]))):
                    run(Path(included).resolve())
            else:
                raise AssertionError(f"{path}: unexpected directive {match['cmd']}")

    run(CONF / "freeswitch.xml")
    return ET.fromstring("".join(out)), variables


def params(root: ET.Element, config: str) -> dict[str, str]:
    node = root.find(f"./section[@name='configuration']/configuration[@name='{config}']/settings")
    assert node is not None, config
    return {p.get("name", ""): p.get("value", "") for p in node.iter("param")}


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    env = {"VP_FS_ESL_PASSWORD": PASSWORD, "VP_FS_STREAM_SECRET": STREAM_SECRET, **NATS_PASSWORDS}
    result = interpolate(raw_compose, env)
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def fs_env(compose: dict[str, Any]) -> dict[str, str]:
    """The FreeSWITCH container's environment as its entry point leaves it (empty values unset)."""
    return {k: str(v) for k, v in compose["services"]["freeswitch"]["environment"].items() if v != ""}


# ---- compose ---------------------------------------------------------------------------------------


def test_compose_valid_against_spec_before_and_after_interpolation(
    raw_compose: dict[str, Any], compose: dict[str, Any]
) -> None:
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    for document in (raw_compose, compose):
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)
        ]
        assert not errors, errors


def test_esl_password_is_required_and_shared(raw_compose: dict[str, Any], compose: dict[str, Any]) -> None:
    with pytest.raises(InterpolationError, match="VP_FS_ESL_PASSWORD"):
        interpolate(raw_compose, NATS_PASSWORDS)
    with pytest.raises(InterpolationError, match="VP_FS_ESL_PASSWORD"):
        interpolate(raw_compose, {"VP_FS_ESL_PASSWORD": "", **NATS_PASSWORDS})
    services = compose["services"]
    assert services["freeswitch"]["environment"]["VP_FS_ESL_PASSWORD"] == PASSWORD
    assert services["gateway-fs"]["environment"]["VP_FS_ESL_PASSWORD"] == PASSWORD
    assert "ClueCon" not in (COMPOSE_DIR / "docker-compose.yml").read_text()


def test_stream_secret_is_required_and_shared(raw_compose: dict[str, Any], compose: dict[str, Any]) -> None:
    with pytest.raises(InterpolationError, match="VP_FS_STREAM_SECRET"):
        interpolate(raw_compose, {"VP_FS_ESL_PASSWORD": PASSWORD, **NATS_PASSWORDS})
    services = compose["services"]
    assert services["freeswitch"]["environment"]["VP_FS_STREAM_SECRET"] == STREAM_SECRET
    assert services["gateway-fs"]["environment"]["VP_FS_STREAM_SECRET"] == STREAM_SECRET


def test_every_build_context_and_copied_file_exists(compose: dict[str, Any]) -> None:
    builds = {name: svc["build"] for name, svc in compose["services"].items() if "build" in svc}
    assert "freeswitch" in builds and "gateway-fs" in builds
    for name, build in builds.items():
        context = (COMPOSE_DIR / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), name
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert (context / source).exists(), f"{name}: {line}"


def test_esl_port_is_not_published_sip_and_rtp_are(compose: dict[str, Any]) -> None:
    published = {name: [str(p) for p in svc.get("ports", [])] for name, svc in compose["services"].items()}
    assert not any("8021" in port for ports in published.values() for port in ports)
    fs_ports = set(published["freeswitch"])
    assert {"5060:5060/udp", "5060:5060/tcp"} <= fs_ports
    _, variables = preprocess({})
    rtp = f"{variables['rtp_start_port']}-{variables['rtp_end_port']}"
    assert f"{rtp}:{rtp}/udp" in fs_ports  # SDP carries the container's port: host port must equal it
    assert f"{rtp}/udp" in (FS_DIR / "Dockerfile").read_text()


def test_gateway_fs_service_settings_load(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    svc = compose["services"]["gateway-fs"]
    assert svc["command"] == ["python", "-m", "vp_gateway_fs"]
    assert "ports" not in svc
    assert svc["depends_on"]["freeswitch"]["condition"] == "service_healthy"
    assert svc["depends_on"]["nats"]["condition"] == "service_healthy"
    settings_module = pytest.importorskip("vp_gateway_fs.settings")
    for name, value in svc["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = settings_module.GatewayFsSettings(_env_file=None)
    assert (settings.http_port, settings.fs_esl_host, settings.fs_esl_port) == (8091, "freeswitch", 8021)
    assert f"127.0.0.1:{settings.http_port}/health" in " ".join(svc["healthcheck"]["test"])
    # FreeSWITCH streams to the gateway's stream listener, not to its HTTP port
    vars_xml = (REPO / "deploy" / "compose" / "freeswitch" / "conf" / "vars.xml").read_text()
    assert f"robot_ws_url=ws://gateway-fs:{settings.fs_stream_port}/call" in vars_xml
    assert settings.fs_stream_url == f"ws://gateway-fs:{settings.fs_stream_port}/call"
    assert settings_module.password_problem(settings) is None
    assert settings_module.stream_secret_problem(settings) is None
    assert str(settings.fs_recordings_dir) == "/recordings"
    assert settings_module.parse_routes(settings.fs_routes)["7000"] == "pipeline_russian"
    assert (REPO / "robots" / settings.fs_default_robot / "config.json").is_file()


def test_recordings_volume_is_shared_at_the_same_path(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "recordings" in compose["volumes"]
    for name in ("freeswitch", "gateway-fs"):
        assert "recordings:/recordings" in services[name]["volumes"], name
    assert services["gateway-fs"]["environment"]["VP_FS_RECORDINGS_DIR"] == "/recordings"
    # one owner on both sides: FreeSWITCH's user has the uid of the repository image's vp user
    fs_uid = re.search(r"ARG FS_UID=(\d+)", (FS_DIR / "Dockerfile").read_text())
    vp_uid = re.search(r"--uid (\d+) .* vp", (REPO / "Dockerfile").read_text())
    assert fs_uid and vp_uid and fs_uid[1] == vp_uid[1]


# ---- FreeSWITCH configuration ----------------------------------------------------------------------


def test_config_files_are_well_formed_xml() -> None:
    files = sorted(CONF.rglob("*.xml"))
    assert len(files) >= 9
    for path in files:
        ET.parse(path)  # raises on malformed XML
    preprocess({})  # and the whole document once FreeSWITCH has assembled it


def test_pre_processor_directives_are_plain_lines_outside_comments() -> None:
    for path in sorted(CONF.rglob("*.xml")):
        text = path.read_text()
        without_comments = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
        for line in text.splitlines():
            if "x-pre-process" in line.lower():
                match = DIRECTIVE.fullmatch(line.strip())
                assert match, f"{path.name}: {line.strip()}"  # else FreeSWITCH drops the line
                assert match["cmd"] in {"set", "env-set", "include"}, line
                if match["cmd"] == "env-set":  # data="name=$ENV": getenv, the documented way
                    assert re.fullmatch(r"\w+=\$VP_FS_[A-Z_]+", match["data"]), line
        # a directive inside a comment would still run
        assert text.lower().count("x-pre-process") == without_comments.lower().count("x-pre-process")


def test_event_socket_password_comes_from_env_and_is_never_cluecon(fs_env: dict[str, str]) -> None:
    for path in CONF.rglob("*"):
        if path.is_file():
            assert "cluecon" not in path.read_text().lower(), path
    root, _ = preprocess(fs_env)
    assert params(root, "event_socket.conf")["password"] == PASSWORD
    root, _ = preprocess({"VP_FS_ESL_PASSWORD": "another-password"})
    assert params(root, "event_socket.conf")["password"] == "another-password"
    root, _ = preprocess({})  # unset: empty, and the entry point refuses to start (tested below)
    assert params(root, "event_socket.conf")["password"] == ""


def test_event_socket_listen_ip_and_acl_are_restricted(
    compose: dict[str, Any], fs_env: dict[str, str]
) -> None:
    root, _ = preprocess({})
    assert params(root, "event_socket.conf")["listen-ip"] == "127.0.0.1"  # default: loopback only
    root, _ = preprocess(fs_env)
    esl = params(root, "event_socket.conf")
    assert esl["listen-ip"] == "0.0.0.0"
    assert esl["listen-port"] == compose["services"]["gateway-fs"]["environment"]["VP_FS_ESL_PORT"]
    acl_names = [p.get("value") for p in root.iter("param") if p.get("name") == "apply-inbound-acl"]
    assert "vp_esl" in acl_names
    esl_list = root.find(".//network-lists/list[@name='vp_esl']")
    assert esl_list is not None and esl_list.get("default") == "deny"
    allowed = {n.get("cidr") for n in esl_list.iter("node") if n.get("type") == "allow"}
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert allowed == {"127.0.0.0/8", subnet}
    network = ipaddress.ip_network(subnet)
    assert network.is_private and network.prefixlen >= 16


def test_modules_loaded_are_built_and_include_audio_stream_and_event_socket() -> None:
    root = ET.parse(CONF / "autoload_configs" / "modules.conf.xml").getroot()
    loaded = [m.get("module") for m in root.iter("load")]
    assert set(loaded) >= MODULES
    assert len(loaded) == len(set(loaded))
    lines = (FS_DIR / "build" / "modules.conf").read_text().splitlines()
    built = {line.rsplit("/", 1)[-1] for line in lines if line and not line.startswith("#")}
    assert built == set(loaded) - {"mod_audio_stream"}
    dockerfile = (FS_DIR / "Dockerfile").read_text()
    assert "amigniter/mod_audio_stream" in dockerfile and "cmake -DCMAKE_BUILD_TYPE=Release" in dockerfile


def test_sip_profile_port_codecs_and_context(fs_env: dict[str, str]) -> None:
    root, _ = preprocess(fs_env)
    profile = root.find(".//configuration[@name='sofia.conf']/profiles/profile[@name='internal']")
    assert profile is not None
    sip = {p.get("name"): p.get("value") for p in profile.iter("param")}
    assert sip["sip-port"] == "5060"
    assert sip["inbound-codec-prefs"] == "PCMU,PCMA,L16"
    assert sip["ext-rtp-ip"] == FS_GLOBALS["local_ip_v4"]  # VP_FS_EXTERNAL_IP empty: the default
    assert root.find(f".//section[@name='dialplan']/context[@name='{sip['context']}']") is not None
    assert root.find(f".//network-lists/list[@name='{sip['apply-inbound-acl']}']") is not None
    root, _ = preprocess({**fs_env, "VP_FS_EXTERNAL_IP": "203.0.113.10"})
    profile = root.find(".//profile[@name='internal']")
    assert profile is not None
    assert {p.get("name"): p.get("value") for p in profile.iter("param")}["ext-sip-ip"] == "203.0.113.10"


def _audio_stream_args(command: str) -> list[str]:
    """Split like `uuid_audio_stream` does (switch_separate_string, 6 slots): the last takes the rest."""
    name, _, rest = command.partition(" ")
    assert name == "uuid_audio_stream"
    return rest.split(" ", 5)


def test_dialplan_starts_the_stream_to_gateway_fs_then_parks(
    compose: dict[str, Any], fs_env: dict[str, str]
) -> None:
    root, _ = preprocess(fs_env)
    ext = root.find(".//section[@name='dialplan']/context/extension[@name='voice_robot']")
    assert ext is not None
    condition = ext.find("condition")
    assert condition is not None and condition.get("field") == "destination_number"
    number = re.compile(condition.get("expression", ""))
    assert number.fullmatch("7000") and number.fullmatch("+79991234567") and not number.fullmatch("abc")
    actions = [(a.get("application"), a.get("data") or "") for a in condition.iter("action")]
    apps = [app for app, _ in actions]
    assert apps[-2:] == ["answer", "park"]
    assert ("set", "playback_terminators=none") in actions  # a "*" would end a robot segment
    on_answer = [data for app, data in actions if app == "set" and data.startswith("api_on_answer=")]
    assert len(on_answer) == 1 and apps.index("answer") > actions.index(("set", on_answer[0]))
    captured = number.fullmatch("7000")
    assert captured is not None
    command = on_answer[0].removeprefix("api_on_answer=")
    command = command.replace("$1", captured[1]).replace("${uuid}", "c0ffee-uuid")
    command = command.replace("${caller_id_number}", "79990001122")
    uuid, action, url, mix, rate, metadata = _audio_stream_args(command)
    assert (uuid, action, mix, rate) == ("c0ffee-uuid", "start", "mono", "8k")
    assert url == f"ws://gateway-fs:8090/call/c0ffee-uuid?key={STREAM_SECRET}"
    # the form gateway-fs and its clients use
    assert url == stream_url("ws://gateway-fs:8090/call", "c0ffee-uuid", STREAM_SECRET)
    assert json.loads(metadata) == {"dnis": "7000", "caller": "79990001122", "rate": 8000}
    host_port = url.removeprefix("ws://").split("/")[0]
    assert "robot_stream_secret" not in preprocess({})[1]  # no default key: the entry point requires one
    assert host_port == f"gateway-fs:{compose['services']['gateway-fs']['environment']['VP_FS_STREAM_PORT']}"
    raw = (CONF / "dialplan" / "default.xml").read_text()
    assert "{&quot;dnis&quot;:&quot;$1&quot;" in raw  # JSON quotes written as XML entities


def test_lua_bridge_only_when_asked(fs_env: dict[str, str]) -> None:
    root, variables = preprocess(fs_env)
    assert variables["robot_bridge"] == "xml"
    assert preprocess({**fs_env, "VP_FS_ROBOT_BRIDGE": "lua"})[1]["robot_bridge"] == "lua"
    context = root.find(".//section[@name='dialplan']/context")
    assert context is not None
    names = [e.get("name") for e in context.iter("extension")]
    assert names.index("voice_robot_lua") < names.index("voice_robot")
    lua_ext = context.find("extension[@name='voice_robot_lua']")
    assert lua_ext is not None
    switch, number = lua_ext.findall("condition")
    assert (switch.get("field"), switch.get("expression")) == ("${robot_bridge}", "^lua$")
    action = number.find("action")
    assert action is not None and action.get("application") == "lua"
    assert (FS_DIR / "scripts" / action.get("data", "").split()[0]).is_file()


def test_transfer_context_reaches_only_the_configured_operator(fs_env: dict[str, str]) -> None:
    root, variables = preprocess(fs_env)
    assert "operator_uri" not in variables  # VP_FS_OPERATOR_URI empty in compose: unset
    uri = "sofia/internal/operator@pbx.example.com"
    root, variables = preprocess({**fs_env, "VP_FS_OPERATOR_URI": uri})
    assert variables["operator_uri"] == uri
    sip = root.find(".//profile[@name='internal']")
    assert sip is not None
    profile_context = {p.get("name"): p.get("value") for p in sip.iter("param")}["context"]
    context = root.find(".//section[@name='dialplan']/context[@name='vp_transfer']")
    assert context is not None and profile_context != "vp_transfer"  # callers cannot dial into it
    number, target = context.findall("extension[@name='operator']/condition")
    assert re.fullmatch(number.get("expression", ""), "operator")
    assert target.get("field") == "${operator_uri}"
    bridges = [a.get("data") for a in target.iter("action") if a.get("application") == "bridge"]
    assert bridges == ["${operator_uri}"]
    assert [a.get("application") for a in target.iter("anti-action")] == ["hangup"]


_LUA_HARNESS = """
local calls, polls = {}, 0
session = {
  get_uuid = function(self) return "c0ffee-uuid" end,
  getVariable = function(self, name)
    return ({destination_number = "7999", caller_id_number = 'say "hi"\\\\'})[name]
  end,
  answer = function(self) calls[#calls + 1] = "answer" end,
  ready = function(self) polls = polls + 1; return polls <= 2 end,
  sleep = function(self, ms) calls[#calls + 1] = "sleep " .. ms end,
  hangup = function(self, cause) calls[#calls + 1] = "hangup " .. cause end,
}
freeswitch = {
  getGlobalVariable = function(name) return ({robot_stream_secret = "lua-stream-key-0123456"})[name] end,
  consoleLog = function(level, text) calls[#calls + 1] = "log " .. level end,
  API = function()
    return {executeString = function(self, cmd) calls[#calls + 1] = "api " .. cmd; return REPLY end}
  end,
}
argv = {[0] = "robot.lua", "7000"}
dofile(SCRIPT)
for _, call in ipairs(calls) do print(call) end
"""


@pytest.mark.parametrize("reply", ["+OK Success\n", "-ERR Operation Failed\n"])
def test_robot_lua_starts_the_same_stream(reply: str, tmp_path: Path) -> None:
    lua = shutil.which("lua5.2") or shutil.which("lua5.3") or shutil.which("lua")
    if lua is None:
        pytest.skip("no Lua interpreter (apt-get install lua5.2)")
    harness = tmp_path / "harness.lua"
    script = FS_DIR / "scripts" / "robot.lua"
    harness.write_text(f"REPLY = {json.dumps(reply)}\nSCRIPT = {json.dumps(str(script))}\n" + _LUA_HARNESS)
    out = subprocess.run([lua, str(harness)], capture_output=True, text=True, timeout=10, check=True)
    calls = out.stdout.splitlines()
    assert calls[0] == "answer" and calls[1].startswith("api ")
    uuid, action, url, mix, rate, metadata = _audio_stream_args(calls[1].removeprefix("api "))
    assert (uuid, action, url, mix, rate) == (
        "c0ffee-uuid",
        "start",
        "ws://gateway-fs:8090/call/c0ffee-uuid?key=lua-stream-key-0123456",
        "mono",
        "8k",
    )
    assert json.loads(metadata) == {"dnis": "7000", "caller": 'say "hi"\\', "rate": 8000}
    if reply.startswith("+OK"):
        assert calls[2:] == ["sleep 1000", "sleep 1000"]
    else:
        assert calls[2:] == ["log ERR", "hangup DESTINATION_OUT_OF_ORDER"]


# ---- the image's scripts and Dockerfile ------------------------------------------------------------


def _entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(FS_DIR / "docker-entrypoint.sh"), *command],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=10,
    )


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("", "not set"),
        ("ClueCon", "stock password"),
        ("short", "shorter than 8"),
        ("with space 123", "may not contain"),
        ('quote"12345', "may not contain"),
        ("amp&12345678", "may not contain"),
        ("lt<12345678", "may not contain"),
    ],
)
def test_entrypoint_refuses_a_missing_stock_or_unsafe_password(password: str, reason: str) -> None:
    env = {"VP_FS_ESL_PASSWORD": password, "VP_FS_STREAM_SECRET": STREAM_SECRET}
    result = _entrypoint(env, "echo", "started")
    assert result.returncode != 0 and "started" not in result.stdout
    assert "VP_FS_ESL_PASSWORD" in result.stderr and reason in result.stderr
    assert len(password) < 8 or password not in result.stderr  # a secret is never echoed


@pytest.mark.parametrize(
    ("secret", "reason"),
    [("", "not set"), ("short-key", "shorter than 16"), ("with&ampersand-0123456", "may hold only")],
)
def test_entrypoint_refuses_a_missing_short_or_unsafe_stream_secret(secret: str, reason: str) -> None:
    result = _entrypoint({"VP_FS_ESL_PASSWORD": PASSWORD, "VP_FS_STREAM_SECRET": secret}, "echo", "started")
    assert result.returncode != 0 and "started" not in result.stdout
    assert "VP_FS_STREAM_SECRET" in result.stderr and reason in result.stderr
    assert not secret or secret not in result.stderr


def test_entrypoint_unsets_empty_settings_then_execs_the_command() -> None:
    env = {
        "VP_FS_ESL_PASSWORD": PASSWORD,
        "VP_FS_STREAM_SECRET": STREAM_SECRET,
        "VP_FS_EXTERNAL_IP": "",
        "VP_FS_LOG_LEVEL": "debug",
    }
    result = _entrypoint(env, "env")
    assert result.returncode == 0, result.stderr
    assert "VP_FS_EXTERNAL_IP" not in result.stdout  # so vars.xml keeps its default
    assert "VP_FS_LOG_LEVEL=debug" in result.stdout
    assert _entrypoint({**env, "VP_FS_ROBOT_BRIDGE": "perl"}, "true").returncode != 0


def test_runtime_deps_names_packages_and_finds_missing_libraries(tmp_path: Path) -> None:
    script = str(FS_DIR / "runtime-deps.sh")
    if not (shutil.which("dpkg-query") and shutil.which("ldd") and shutil.which("gcc")):
        pytest.skip("needs dpkg-query, ldd and gcc (Debian)")
    listed = subprocess.run(["sh", script, "packages", "/bin/sh"], capture_output=True, text=True, check=True)
    assert "libc6" in listed.stdout.split()
    assert subprocess.run(["sh", script, "check", "/bin/sh"], capture_output=True).returncode == 0
    (tmp_path / "lib.c").write_text("int vp_probe(void) { return 1; }\n")
    (tmp_path / "main.c").write_text("int vp_probe(void);\nint main(void) { return vp_probe(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", "libvpprobe.so", "lib.c"], cwd=tmp_path, check=True)
    subprocess.run(["gcc", "-o", "prog", "main.c", "-L.", "-lvpprobe"], cwd=tmp_path, check=True)
    (tmp_path / "libvpprobe.so").unlink()
    missing = subprocess.run(["sh", script, "check", str(tmp_path / "prog")], capture_output=True, text=True)
    assert missing.returncode == 1 and "libvpprobe.so" in missing.stderr


def test_dockerfile_is_multistage_pinned_and_runs_unprivileged() -> None:
    text = (FS_DIR / "Dockerfile").read_text()
    assert text.startswith("#") and len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2
    refs = dict(re.findall(r"^ARG (\w+_REF)=(\S+)$", text, re.MULTILINE))
    assert set(refs) == {"FREESWITCH_REF", "SOFIA_SIP_REF", "SPANDSP_REF", "MOD_AUDIO_STREAM_REF"}
    assert refs["FREESWITCH_REF"].startswith("v1.10.") and refs["SOFIA_SIP_REF"].startswith("v1.13.")
    assert not any(ref in ("master", "main", "HEAD") for ref in refs.values())
    assert re.search(r"^USER freeswitch$", text, re.MULTILINE)
    assert 'CMD ["freeswitch", "-nonat", "-c"]' in text and "runtime-deps.sh check" in text
    health = (FS_DIR / "healthcheck.sh").read_text()
    assert re.search(r"^fs_cli .* -x status \| grep -q '\^UP'$", health, re.MULTILINE)
