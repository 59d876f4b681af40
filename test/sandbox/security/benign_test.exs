defmodule Sandbox.Security.BenignTest do
  # Ordinary OTP code runs unchanged, with the same results, in every profile.
  use ExUnit.Case, async: true

  @moduletag :tmp_dir

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
        # Its registered names (NS.Tasks, NS.Dyn) are not module names, and
        # so the same in every sandbox: one at a time.
        :ok = Sandbox.destroy_sandbox(id)
        result
      end

    [high, medium, low] = results
    assert high == low and medium == low

    assert low.stored == [a: 1]
    assert low.started == [started: true]
    assert low.task == 55 and low.supervised == 4.0
    assert low.agent == [:x] and low.child == :dyn
    assert low.pong == :pong and low.myself == :ok and low.tick == :tick
    assert low.dynamic == [9, 16, 25, 36, [1, 4]]
    assert low.rescued == "boom"
  end
end
