defmodule Sandbox.Security.BenignTest do
  # Ordinary OTP code runs unchanged, with the same results, in every profile.
  use ExUnit.Case, async: true

  @moduletag :tmp_dir
  @moduletag skip: "needs the relocator's capability-guard options (issue 12, native part)"

  test "GenServer, Supervisor, Task, Agent, ETS, spawn/send, dynamic dispatch: same answers under :high, :medium and :low",
       ctx do
    hash = :erlang.phash2(ctx.test)
    ns = "Benign#{hash}"
    dir = Sandbox.Test.BenignFixture.write(Path.join(ctx.tmp_dir, "benign"), ns)

    results =
      for profile <- [:high, :medium, :low] do
        id = "benign#{hash}#{profile}"
        on_exit(fn -> Sandbox.destroy_sandbox(id) end)

        assert {:ok, _} =
                 Sandbox.create_sandbox(id, Module.concat(ns, Sup),
                   sandbox_path: dir,
                   security_profile: profile
                 )

        assert {:ok, result} = Sandbox.call(id, Module.concat(ns, Work), :run, [])
        result
      end

    [high, medium, low] = results
    assert high == low and medium == low

    assert low.stored == [a: 1]
    assert low.started == [started: true]
    assert low.task == 55 and low.supervised == 4.0
    assert low.agent == [:x] and low.child == :dyn
    assert low.pong == :pong and low.myself == :ok
    assert low.dynamic == [9, 16, 25, 36, [1, 4]]
    assert low.rescued == "boom"
  end
end
