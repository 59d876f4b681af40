defmodule Sandbox.Test.TelemetrySink do
  @moduledoc false
  # A stand-in for the :telemetry package (which cannot be installed here),
  # for a peer VM: telemetry_source/0 is an Erlang module `telemetry` whose
  # execute/3 sends each event to the process registered as
  # :telemetry_sink; start/0 starts that process and events/0 reads what it
  # got, oldest first.

  def telemetry_source do
    """
    -module(telemetry).
    -export([execute/3]).
    execute(Name, Measurements, Metadata) ->
        case whereis(telemetry_sink) of
            undefined -> ok;
            Pid -> Pid ! {telemetry, Name, Measurements, Metadata}, ok
        end.
    """
  end

  @doc "The stand-in module's BEAM, compiled without loading it."
  def telemetry_beam do
    {:ok, tokens, _} = :erl_scan.string(String.to_charlist(telemetry_source()))

    forms =
      tokens
      |> Enum.chunk_while(
        [],
        fn
          {:dot, _} = dot, acc -> {:cont, Enum.reverse([dot | acc]), []}
          token, acc -> {:cont, [token | acc]}
        end,
        fn acc -> {:cont, acc} end
      )
      |> Enum.reject(&(&1 == []))
      |> Enum.map(fn form ->
        {:ok, parsed} = :erl_parse.parse_form(form)
        parsed
      end)

    {:ok, :telemetry, beam} = :compile.forms(forms, [:binary])
    beam
  end

  def start do
    pid = spawn(fn -> loop([]) end)
    Process.register(pid, :telemetry_sink)
    :ok
  end

  def events do
    ref = make_ref()
    send(:telemetry_sink, {:get, self(), ref})

    receive do
      {^ref, events} -> events
    end
  end

  defp loop(events) do
    receive do
      {:telemetry, name, measurements, metadata} ->
        loop([{name, measurements, metadata} | events])

      {:get, from, ref} ->
        send(from, {ref, Enum.reverse(events)}) && loop(events)
    end
  end
end
