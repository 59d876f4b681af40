defmodule Sandbox.FidelityTest do
  use ExUnit.Case, async: true

  import Sandbox.Test.Fixtures, only: [project: 2]

  @moduletag :tmp_dir

  setup ctx do
    hash = :erlang.phash2(ctx.test)
    ns = "Fid#{hash}"
    id = "fid#{hash}"
    on_exit(fn -> Sandbox.destroy_sandbox(id) end)

    dir =
      project(Path.join(ctx.tmp_dir, "p"), %{
        "sup.ex" => """
        defmodule #{ns}.Sup do
          use Supervisor
          def start_link(a), do: Supervisor.start_link(__MODULE__, a, name: __MODULE__)
          @impl true
          def init(_), do: Supervisor.init([], strategy: :one_for_one)
        end
        """,
        "code.ex" => """
        defmodule #{ns}.Point do
          defstruct [:x, :y]
        end
        defmodule #{ns}.Error do
          defexception [:message]
        end
        defmodule #{ns}.Code do
          require Logger
          def point, do: %#{ns}.Point{x: 1, y: 2}
          def nested, do: {[%{key: %#{ns}.Point{x: 3}}], #{ns}.Code, :data, "#{ns}.Point"}
          def fail, do: raise(#{ns}.Error, message: "boom")
          def log, do: Logger.info("from the sandbox")
          def many(n), do: for(i <- 1..n, do: %#{ns}.Point{x: i, y: String.duplicate("y", 90)})
        end
        """
      })

    {:ok, _} = Sandbox.create_sandbox(id, Module.concat(ns, Sup), sandbox_path: dir)
    m = &Module.concat(ns, &1)
    %{id: id, ns: ns, code: m.(Code), point: m.(Point), error: m.(Error)}
  end

  test "original_names: true maps structs, exceptions, stack traces and nested terms", ctx do
    relocated = Sandbox.module_name(ctx.id, ctx.point)
    assert {:ok, %{__struct__: ^relocated}} = Sandbox.call(ctx.id, ctx.code, :point, [])

    point = ctx.point

    assert {:ok, %{__struct__: ^point, x: 1, y: 2}} =
             Sandbox.call(ctx.id, ctx.code, :point, [], original_names: true)

    code = ctx.code

    assert {:ok, {[%{key: %{__struct__: ^point, x: 3}}], ^code, :data, text}} =
             Sandbox.call(ctx.id, ctx.code, :nested, [], original_names: true)

    assert text == "#{ctx.ns}.Point"

    error = ctx.error

    assert {:error,
            {:exception, %{__struct__: ^error, message: "boom"}, [{^code, :fail, 0, _} | _]}} =
             Sandbox.call(ctx.id, ctx.code, :fail, [], original_names: true)

    assert {:ok, %{__struct__: ^point}} =
             Sandbox.run(ctx.id, fn -> apply(Sandbox.module_name(ctx.id, code), :point, []) end,
               original_names: true
             )

    # A large term: 10,000 structs, about 1 MB.
    assert {:ok, list} = Sandbox.call(ctx.id, ctx.code, :many, [10_000], original_names: true)
    assert length(list) == 10_000 and Enum.all?(list, &(&1.__struct__ == point))
  end

  @tag :capture_log
  test "destroy leaves no persistent_term key naming the sandbox's modules", ctx do
    assert {:ok, :ok} = Sandbox.call(ctx.id, ctx.code, :log, [])
    relocated = Sandbox.module_name(ctx.id, ctx.code)

    keys = fn ->
      for {k, _} <- :persistent_term.get(), is_tuple(k), relocated in Tuple.to_list(k), do: k
    end

    # The leftover is real: OTP's logger cached the module's level.
    assert keys.() != []
    :ok = Sandbox.destroy_sandbox(ctx.id)
    assert keys.() == []
  end
end
