-- robot.lua: the Lua bridge to a voice robot (the seed's ws_bridge.lua, rewritten for gateway-fs).
--
-- The dialplan runs it when VP_FS_ROBOT_BRIDGE=lua, as `lua robot.lua <dialled number>`; it does what
-- the default XML extension does (docs/protocols/freeswitch.md): answer, start mod_audio_stream to gateway-fs
-- with the call's metadata as the first text frame, then keep the call up while gateway-fs drives it
-- over the Event Socket (sendmsg playback, uuid_break, uuid_kill ... act on the channel while we sleep).
-- Uses only session:answer/get_uuid/getVariable/ready/sleep/hangup and freeswitch.API/consoleLog
-- (switch_cpp.h and mod_lua).

local RATE = 8000
local MAX_CALL_S = 3600

-- JSON string literal: quotes, backslashes and control characters escaped
local function json_string(text)
    local escaped = text:gsub('[%c"\\]', function(c)
        return string.format("\\u%04x", c:byte())
    end)
    return '"' .. escaped .. '"'
end

local function metadata(dnis, caller)
    return "{" .. '"dnis":' .. json_string(dnis) .. ',"caller":' .. json_string(caller)
        .. ',"rate":' .. RATE .. "}"
end

local uuid = session:get_uuid()
local dnis = (argv and argv[1]) or session:getVariable("destination_number") or ""
local caller = session:getVariable("caller_id_number") or ""
local ws_url = freeswitch.getGlobalVariable("robot_ws_url") or "ws://gateway-fs:8090/call"
-- gateway-fs refuses a stream without the deployment's key (VP_FS_STREAM_SECRET, URL-safe by rule)
local stream_key = freeswitch.getGlobalVariable("robot_stream_secret") or ""

session:answer()
-- the metadata is the last argument of `start` and may hold spaces: it takes the rest of the line
local command = "uuid_audio_stream " .. uuid .. " start " .. ws_url .. "/" .. uuid .. "?key=" .. stream_key
    .. " mono 8k "
    .. metadata(dnis, caller)
local reply = freeswitch.API():executeString(command) or ""
if not reply:match("^%+OK") then
    freeswitch.consoleLog("ERR", "robot.lua: uuid_audio_stream failed for " .. uuid .. ": " .. reply .. "\n")
    session:hangup("DESTINATION_OUT_OF_ORDER")
    return
end

local waited = 0
while session:ready() and waited < MAX_CALL_S do
    session:sleep(1000)
    waited = waited + 1
end
if session:ready() then
    session:hangup("ALLOTTED_TIMEOUT")
end
