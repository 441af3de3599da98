-module(hold).
-export([main/1]).
%% Holds every connection it accepts and writes "ok\n" on each; a socket the peer closes
%% is closed here too (each held by a process of its own waiting in recv).
main([Host, Port]) ->
    {ok, Ip} = inet:parse_address(Host),
    {ok, L} = gen_tcp:listen(list_to_integer(Port), [{ip, Ip}, {reuseaddr, true}, {active, false}, {backlog, 4096}]),
    loop(L).
loop(L) ->
    case gen_tcp:accept(L) of
        {ok, S} ->
            gen_tcp:send(S, <<"ok\n">>),
            Pid = spawn(fun() -> receive go -> gen_tcp:recv(S, 0), gen_tcp:close(S) end end),
            gen_tcp:controlling_process(S, Pid),
            Pid ! go;
        {error, E} ->
            io:format("accept: ~p~n", [E]),
            timer:sleep(20)
    end,
    loop(L).
