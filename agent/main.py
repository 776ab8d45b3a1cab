def main(): print("agent")
