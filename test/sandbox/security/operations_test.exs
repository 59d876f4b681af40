defmodule Sandbox.SecurityController.OperationsTest do
  use ExUnit.Case, async: true

  alias Sandbox.SecurityController.Operations

  @classes [
    :basic_otp,
    :math,
    :string,
    :file_read,
    :file_write,
    :network_client,
    :code_load,
    :all
  ]

  defp exports(module) do
    case Code.ensure_loaded(module) do
      {:module, _} -> module.module_info(:exports)
      {:error, _} -> nil
    end
  end

  defp valid_verdict?(:allowed), do: true
  defp valid_verdict?(:forbidden), do: true

  defp valid_verdict?({:guarded, [_ | _] = checks}) do
    Enum.all?(checks, fn
      {kind, n}
      when kind in [
             :member,
             :server,
             :fun,
             :module,
             :child_spec,
             :ets,
             :write,
             :open,
             :map_module
           ] ->
        is_integer(n) and n > 0

      {:mfa, m, f, a} ->
        Enum.all?([m, f, a], &(is_integer(&1) and &1 > 0))

      kind ->
        kind in [
          :send,
          :ets_new,
          :new_atom,
          :binary_to_term,
          :group_leader,
          :spawn,
          :make_fun,
          :code_load
        ]
    end)
  end

  defp valid_verdict?(_), do: false

  test "every exported function of every listed module is classified" do
    for module <- Operations.modules(), exports = exports(module), exports != nil do
      for {f, a} <- exports, {f, a} not in [module_info: 0, module_info: 1] do
        {class, verdict} = Operations.classify({module, f, a})
        assert class in @classes, "#{inspect(module)}.#{f}/#{a}: class #{inspect(class)}"
        assert valid_verdict?(verdict), "#{inspect(module)}.#{f}/#{a}: #{inspect(verdict)}"

        # A guarded check's argument positions exist in the call.
        with {:guarded, checks} <- verdict do
          for check <- checks, n <- positions(check) do
            assert n <= a, "#{inspect(module)}.#{f}/#{a}: #{inspect(check)} beyond the arity"
          end
        end
      end
    end
  end

  defp positions({:mfa, m, f, a}), do: [m, f, a]
  defp positions({_kind, n}) when is_integer(n), do: [n]
  defp positions(_), do: []

  test "every function named in a table exists (a typo would fall back to the default)" do
    for {module, {_class, _default, exceptions}} <- Operations.table(),
        exports = exports(module),
        exports != nil,
        {fa, _} <- exceptions do
      assert fa in exports, "#{inspect(module)}: #{inspect(fa)} is not exported"
    end
  end

  # Names that change or stop the host, read it, or run code: a module listed
  # whole with an allowed default must not export one unclassified.
  @dangerous ~w(halt stop cmd open_port put_env delete_env to_atom list_to_atom binary_to_atom
                binary_to_term exit link spawn spawn_link spawn_monitor apply send register
                load_module purge delete_module set_cookie connect eval eval_string compile_string
                system_flag trace kill suspend_process resume_process put erase)a

  test "modules allowed whole export nothing dangerous unless it is an exception" do
    for {module, {_class, :allowed, exceptions}} <- Operations.table(),
        exports = exports(module),
        exports != nil,
        {f, a} <- exports,
        f in @dangerous,
        # Process-dictionary-free modules: put/erase of a data structure.
        not (f in [:put, :erase] and module not in [:erlang, Process]) do
      assert Map.has_key?(exceptions, {f, a}),
             "#{inspect(module)}.#{f}/#{a} is allowed by the module's default"
    end
  end

  test "an unlisted module is unclassified and forbidden" do
    assert Operations.classify({SomeHostLibrary, :f, 1}) == {:unclassified, :forbidden}
    assert Operations.classify({:erlang, :halt, 0}) == {:all, :forbidden}
    assert Operations.classify({:erlang, :element, 2}) == {:basic_otp, :allowed}

    assert Operations.classify({:erlang, :spawn, 3}) ==
             {:basic_otp, {:guarded, [:spawn, {:mfa, 1, 2, 3}]}}

    assert Operations.classify({String, :to_atom, 1}) == {:basic_otp, {:guarded, [:new_atom]}}
    assert Operations.classify({String, :upcase, 1}) == {:string, :allowed}
    assert Operations.classify({:os, :cmd, 1}) == {:all, :forbidden}
    assert Operations.classify({File, :write, 2}) == {:file_write, {:guarded, [{:write, 2}]}}
  end
end
